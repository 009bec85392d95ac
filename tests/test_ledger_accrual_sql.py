"""The accrual cycle runs inside PostgreSQL (ledger/accruals.py); `ledger.book.accrue` is its
reference. On real PostgreSQL, random sessions accrued at random instants must post exactly what
the reference posts: the same ids, amounts, seconds and times, and the same progress."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from ledger.accruals import accrue_open_sessions
from ledger.book import Posting, Progress, accrue
from ledger.store import save_progress
from ledger.usage import Session
from projections.migrate import migrate

START = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
_progress = msgspec.json.Decoder(Progress)


def sessions(rng: random.Random, count: int) -> list[Session]:
    made = []
    for n in range(count):
        per = rng.choice((1, 3600, 30 * 24 * 3600))
        made.append(
            Session(
                id=f"s-{n}",
                user_id=f"u-{n % 3}",
                resource_type="instance",
                resource_id=f"r-{n}",
                product="instances.gpu",
                meter="instance.gpu",
                slot="instance.gpu",
                tier="secure",
                gpu_type_id=rng.choice(("NVIDIA GeForce RTX 4090", None)),
                quantity=rng.randint(1, 8),
                unit_price_micros=rng.choice((0, 1, 7, 310, 690_000, 2_990_000, 10**9)),
                per_seconds=per,
                rate_card_version="2026-11-30",
                started_at=START + timedelta(microseconds=rng.randrange(10**7)),
            )
        )
    return made


async def test_the_cycle_in_postgresql_posts_what_the_reference_posts(database_url: str) -> None:
    await migrate(database_url)
    rng = random.Random(20261130)
    made = sessions(rng, 60)
    reference = {s.id: Progress(session=s) for s in made}
    expected: list[Posting] = []
    ticks = sorted(
        START + timedelta(microseconds=rng.randrange(10**7, 4 * 3600 * 10**6)) for _ in range(6)
    )
    # Some exactly on a whole second of a session, where rounding down matters most.
    ticks.insert(2, made[0].started_at + timedelta(seconds=900))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        async with conn.transaction():
            for s in made:
                await conn.execute(
                    "INSERT INTO ledger_sessions (id, user_id, resource_type, resource_id, product,"
                    " meter, slot, tier, gpu_type_id, quantity, unit_price_micros, per_seconds,"
                    " rate_card_version, started_at, opened_by_sequence) VALUES"
                    " (%s, %s, 'instance', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1)",
                    (s.id, s.user_id, s.resource_id, s.product, s.meter, s.slot, s.tier,
                     s.gpu_type_id, s.quantity, s.unit_price_micros, s.per_seconds,
                     s.rate_card_version, s.started_at),
                )  # fmt: skip
            await save_progress(conn, list(reference.values()))
        for tick in sorted(ticks):
            now_posted: list[Posting] = []
            for session_id, before in reference.items():
                after, posting = accrue(before, tick)
                reference[session_id] = after
                now_posted += [posting] if posting else []
            async with conn.transaction():
                assert await accrue_open_sessions(conn, tick) == len(now_posted)
            expected += now_posted
        cur = await conn.execute(
            "SELECT id, at, user_id, debit, credit, amount_micros, kind, product, meter,"
            " resource_id, gpu_type_id, quantity, unit_price_micros, seconds, session_id,"
            " rate_card_version, reason FROM ledger_postings ORDER BY id"
        )
        names = Posting.__struct_fields__
        got = [Posting(**dict(zip(names, row, strict=True))) for row in await cur.fetchall()]
        cur = await conn.execute("SELECT doc::text FROM ledger_progress ORDER BY session_id")
        stored = [_progress.decode(r[0]) for r in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT account, balance_micros FROM ledger_balances ORDER BY account"
        )
        balances: dict[str, int] = dict(await cur.fetchall())
    assert len(expected) > 100
    assert sorted(got, key=lambda p: p.id) == sorted(expected, key=lambda p: p.id)
    assert {p.session.id: p for p in stored} == reference
    customers = {a: -sum(p.amount_micros for p in expected if p.debit == a) for a in balances}
    assert {a: b for a, b in balances.items() if a.startswith("customer:")} == {
        a: b for a, b in customers.items() if a.startswith("customer:")
    }
