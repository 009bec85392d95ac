"""The ledger's arithmetic, property-tested: exact to the micro-dollar however a session is cut into
accruals, whatever arrives twice, whatever clock ran ahead."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from hypothesis import given
from hypothesis import strategies as st

from ledger.book import Posting, Progress, accrue, credit, owed, settle
from ledger.usage import Session

START = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=UTC)

prices = st.integers(min_value=0, max_value=50 * 1_000_000)
quantities = st.integers(min_value=1, max_value=8)
per_seconds = st.sampled_from([1, 3600, 30 * 24 * 3600])
micros = st.integers(min_value=0, max_value=40 * 24 * 3600 * 1_000_000)  # up to 40 days


def session(price: int, quantity: int, per: int) -> Session:
    return Session(
        id="s-1",
        user_id="u-1",
        resource_type="instance",
        resource_id="i-1",
        product="instances.gpu",
        meter="instance.gpu",
        slot="instance.gpu",
        tier="secure",
        gpu_type_id="NVIDIA GeForce RTX 4090",
        quantity=quantity,
        unit_price_micros=price,
        per_seconds=per,
        rate_card_version="v",
        started_at=START,
    )


def expected(price: int, quantity: int, per: int, length_us: int) -> int:
    """floor(price x quantity x ceil(seconds) / per), by decimal arithmetic, independently."""
    seconds = (Decimal(length_us) / 1_000_000).to_integral_value(rounding=ROUND_CEILING)
    return int((Decimal(price) * quantity * seconds / per).to_integral_value(rounding=ROUND_FLOOR))


def net(postings: list[Posting]) -> int:
    return sum(p.signed_micros for p in postings)


@given(prices, quantities, per_seconds, micros, st.lists(micros, max_size=40))
def test_any_accrual_schedule_sums_to_one_rounding(
    price: int, quantity: int, per: int, length_us: int, ticks_us: list[int]
) -> None:
    """Accruals at arbitrary instants (some past the real end: a ledger clock ahead of the
    host's), some redelivered, then the close: the session costs exactly its single rounding."""
    s = session(price, quantity, per)
    end = START + timedelta(microseconds=length_us)
    progress = Progress(session=s)
    posted: dict[str, Posting] = {}
    for tick in sorted(ticks_us):
        progress, posting = accrue(progress, START + timedelta(microseconds=tick))
        for p in [posting] if posting else []:
            assert p.id not in posted, "a new posting never reuses an id"
            posted[p.id] = p
    progress, final = settle(progress, end)
    if final:
        posted[final.id] = final
    assert net(list(posted.values())) == expected(price, quantity, per, length_us)
    assert progress.settled and progress.posted_micros == net(list(posted.values()))
    # Nothing after settlement, however often accrual or settlement run again.
    assert accrue(progress, end + timedelta(days=1)) == (progress, None)
    assert settle(progress, end + timedelta(days=1)) == (progress, None)
    for p in posted.values():
        assert p.amount_micros > 0
        assert {p.debit, p.credit} == {"customer:u-1", "revenue:instances.gpu"}


@given(prices, quantities, per_seconds, micros, st.lists(micros, max_size=20))
def test_a_replayed_schedule_posts_the_same_ids_and_amounts(
    price: int, quantity: int, per: int, length_us: int, ticks_us: list[int]
) -> None:
    """A ledger restarted mid-way redoes the same steps: same ids, same amounts (the store keeps
    one of each), so nothing is charged twice."""

    def run() -> list[Posting]:
        progress = Progress(session=session(price, quantity, per))
        out: list[Posting] = []
        for tick in sorted(t for t in ticks_us if t < length_us):
            progress, posting = accrue(progress, START + timedelta(microseconds=tick))
            out += [posting] if posting else []
        progress, final = settle(progress, START + timedelta(microseconds=length_us))
        return out + ([final] if final else [])

    first, second = run(), run()
    assert first == second
    assert len({p.id for p in first}) == len(first)


@given(prices, quantities, per_seconds, st.integers(0, 10**6), st.integers(0, 10**6))
def test_owed_is_monotone_in_time(price: int, quantity: int, per: int, a: int, b: int) -> None:
    s = session(price, quantity, per)
    lo, hi = sorted((a, b))
    assert 0 <= owed(s, lo) <= owed(s, hi)


def test_a_session_shorter_than_a_second_costs_one_second() -> None:
    s = session(3_600_000_000, 1, 3600)  # $3,600 an hour: $1 a second
    _progress, posting = settle(Progress(session=s), START + timedelta(milliseconds=1))
    assert posting is not None and posting.amount_micros == 1_000_000 and posting.seconds == 1


def test_credits_move_money_from_funding_to_the_customer() -> None:
    p = credit("e-1", "u-1", 5_000_000, "signup", START, "welcome")
    assert (p.debit, p.credit, p.signed_micros) == ("funding:signup", "customer:u-1", -5_000_000)
    assert credit("e-1", "u-1", 5_000_000, "signup", START, "welcome").id == p.id


def test_windows_cover_the_session_without_gaps_or_overlap() -> None:
    s = session(690_000, 2, 3600)
    progress = Progress(session=s)
    postings = []
    for second in (59.5, 120.0, 180.9):
        progress, p = accrue(progress, START + timedelta(seconds=second))
        postings += [p] if p else []
    progress, p = settle(progress, START + timedelta(seconds=200.1))
    postings += [p] if p else []
    covered = list(itertools.accumulate(p.seconds for p in postings))
    assert covered == [59, 120, 180, 201]
    assert [p.at - START for p in postings] == [timedelta(seconds=c) for c in covered]
