"""Spend control, property-tested with an injected clock (no sleeping): whatever the usage, credits
and budget, nothing keeps running past an empty balance or a spent budget for longer than one
accrual interval, and nothing is stopped while there is money and budget left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ledger.book import Progress, accrue
from ledger.spend_control import verdict
from ledger.usage import Session

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def gpu_session(price_per_hour: int, gpus: int) -> Session:
    return Session(
        id="s",
        user_id="u",
        resource_type="instance",
        resource_id="i",
        product="instances.gpu",
        meter="instance.gpu",
        slot="instance.gpu",
        tier="secure",
        gpu_type_id="g",
        quantity=gpus,
        unit_price_micros=price_per_hour,
        per_seconds=3600,
        rate_card_version="v",
        started_at=T0,
    )


@given(
    price=st.integers(min_value=1, max_value=50_000_000),
    gpus=st.integers(min_value=1, max_value=8),
    credit=st.integers(min_value=0, max_value=2_000_000),
    budget=st.none() | st.integers(min_value=0, max_value=2_000_000),
    interval=st.integers(min_value=1, max_value=60),
    horizon=st.integers(min_value=1, max_value=6 * 3600),
)
def test_a_running_instance_stops_within_one_accrual_of_the_line_and_never_before(
    price: int, gpus: int, credit: int, budget: int | None, interval: int, horizon: int
) -> None:
    session = gpu_session(price, gpus)
    progress = Progress(session=session)
    stopped_at: int | None = None
    for second in range(interval, horizon + interval, interval):
        progress, _posting = accrue(progress, T0 + timedelta(seconds=second))
        spent = progress.posted_micros
        said = verdict("u", credit - spent, spent, budget)
        if said is not None:
            stopped_at = second
            break
        # Not stopped: there really was money and budget left at this accrual.
        assert credit - spent > 0 and (budget is None or spent < budget)

    def crossed(second: int) -> bool:
        owed = price * gpus * second // 3600
        return credit - owed <= 0 or (budget is not None and owed >= budget)

    first_crossing = next((s for s in range(0, horizon + interval) if crossed(s)), None)
    if stopped_at is None:
        assert first_crossing is None or first_crossing > horizon - interval
    else:
        assert first_crossing is not None
        # Stopped at the first accrual at or after the line: at most one interval past it.
        assert first_crossing <= stopped_at < first_crossing + interval + 1
