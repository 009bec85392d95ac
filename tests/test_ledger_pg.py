"""The ledger on real NATS and PostgreSQL: events in, sessions and postings out, exactly once,
accruals that add up, append-only tables, and `verify` catching a break."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.catalog import version_of
from events.envelope import AggregateRef, Envelope
from events.host import HostLost, HostRecovered
from events.ids import new_id
from events.instance import InstanceRunning, InstanceStopped, InstanceTerminated
from events.store import JetStreamEventStore
from events.user import CreditGranted
from events.volume import VolumeCreated, VolumeDeleted, VolumeProvisioned
from ledger.accruals import accrue_open_sessions
from ledger.consumer import CHECKPOINT, LedgerProjection
from ledger.verify import Replayed, check_replay, check_tables
from projections import checkpoints
from projections.runner import ProjectionRunner
from services.cli.embedded import EmbeddedNats
from services.nats_permissions import LEDGER_USER
from tests.servers import connect_as
from tests.test_ledger_tracking import created

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
RTX_SECURE_PER_HOUR = 690_000


@pytest.fixture
async def ledger_nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await connect_as(nats_server, LEDGER_USER)
    yield client
    await client.close()


class Stream:
    """Appends events as the deciders would (the real store), one aggregate at a time."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store
        self.last: dict[AggregateRef, int] = {}

    async def emit(
        self, kind: str, aggregate_id: str, at: datetime, data: msgspec.Struct, actor: str = "u1"
    ) -> int:
        ref = AggregateRef(kind, aggregate_id)
        event = Envelope(
            id=new_id(),
            type=type(data).__name__,
            version=version_of(data),
            aggregate=ref,
            occurred_at=at,
            recorded_at=at,
            actor=actor,
            correlation_id="test",
            data=data,
        )
        sequence = await self.store.append(ref, [event], self.last.get(ref, 0))
        self.last[ref] = sequence
        return sequence


async def until_applied(pool: AsyncConnectionPool[Any], sequence: int) -> None:
    for _ in range(300):
        async with pool.connection() as conn:
            if await checkpoints.read(conn, CHECKPOINT) >= sequence:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the ledger never reached {sequence}")


async def balance(pool: AsyncConnectionPool[Any], account: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT COALESCE((SELECT balance_micros FROM ledger_balances WHERE account = %s), 0)",
            (account,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def problems(pool: AsyncConnectionPool[Any], stream: Stream) -> list[str]:
    # In stream order across aggregates, as `ledger verify` reads it: host events touch instances.
    events = [e for ref in stream.last for e in await stream.store.load(ref)]
    replayed = Replayed()
    replayed.apply(sorted(events, key=lambda e: e.sequence))
    async with pool.connection() as conn:
        found = await check_tables(conn)
        return found + await check_replay(conn, replayed)


async def test_an_instance_is_billed_to_the_micro_dollar_through_host_loss_and_accruals(
    nc: NatsClient, ledger_nc: NatsClient, pool: AsyncConnectionPool[Any]
) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    stream = Stream(store)
    ledger = ProjectionRunner(ledger_nc, pool, [LedgerProjection()])
    await ledger.start()
    try:
        user, instance, host = f"u-{new_id()}", new_id(), f"h-{new_id()[:8]}"
        await stream.emit(
            "user",
            user,
            T0,
            CreditGranted(amount_micros=5_000_000, source="signup", reason="welcome"),
        )
        # 2 GPUs, SECURE: 1.38 $/h; container disk 20 GB; own volume 50 GB.
        await stream.emit("instance", instance, T0, created(host_id=host), actor=user)
        await stream.emit("instance", instance, T0 + timedelta(seconds=10.4), InstanceRunning())
        seq = await stream.emit(
            "host",
            host,
            T0 + timedelta(seconds=130),
            HostLost(reason="no heartbeat for 10s", last_heard_at=T0 + timedelta(seconds=120)),
        )
        await until_applied(pool, seq)
        async with pool.connection() as conn, conn.transaction():
            # A ledger clock past the host's: the stop below arrives later and corrects it.
            assert await accrue_open_sessions(conn, T0 + timedelta(seconds=200)) > 0
        await stream.emit("host", host, T0 + timedelta(seconds=300), HostRecovered())
        await stream.emit(
            "instance", instance, T0 + timedelta(seconds=400.2), InstanceStopped(lease_id="l")
        )
        seq = await stream.emit(
            "instance", instance, T0 + timedelta(seconds=500), InstanceTerminated(lease_id="l")
        )
        await until_applied(pool, seq)
        async with pool.connection() as conn, conn.transaction():
            await accrue_open_sessions(conn, T0 + timedelta(seconds=10_000))
    finally:
        await ledger.stop()

    # GPU: [10.4, 120) and [300, 400.2): 110 s and 101 s (each rounded up once).
    gpu = (RTX_SECURE_PER_HOUR * 2 * 110) // 3600 + (RTX_SECURE_PER_HOUR * 2 * 101) // 3600
    # Container disk while running, $0.10/GB/month: [10.4, 400.2) = 390 s, through the host loss.
    month = 30 * 24 * 3600
    container = (100_000 * 20 * 390) // month
    # Own volume, 50 GB: stopped rate [0, 10.4) and [400.2, 500), running rate between.
    volume = (
        (200_000 * 50 * 11) // month + (100_000 * 50 * 390) // month + (200_000 * 50 * 100) // month
    )
    assert await balance(pool, f"customer:{user}") == 5_000_000 - gpu - container - volume
    assert await balance(pool, "revenue:instances.gpu") == gpu
    assert await balance(pool, "revenue:instances.storage") == container + volume
    assert await balance(pool, "funding:signup") == -5_000_000
    assert await problems(pool, stream) == []


async def test_a_network_volume_costs_per_gb_second_and_the_ledger_survives_restarts(
    nc: NatsClient, ledger_nc: NatsClient, pool: AsyncConnectionPool[Any]
) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    stream = Stream(store)
    user, volume = f"u-{new_id()}", new_id()
    await stream.emit(
        "volume",
        volume,
        T0,
        VolumeCreated(
            name="v",
            size_gb=1200,
            datacenter_id="US-TX-3",
            host_id="h",
            price_per_gb_month_micros=1,
            rate_card_version="v",
        ),
        actor=user,
    )
    await stream.emit("volume", volume, T0 + timedelta(seconds=2), VolumeProvisioned())
    last = await stream.emit("volume", volume, T0 + timedelta(days=3), VolumeDeleted())
    for _ in range(3):  # three ledgers started one after another: nothing is applied twice
        ledger = ProjectionRunner(ledger_nc, pool, [LedgerProjection()])
        await ledger.start()
        await until_applied(pool, last)
        await ledger.stop()
    seconds = 3 * 86400 - 2
    month = 30 * 24 * 3600
    expected = (70_000 * 1000 * seconds) // month + (50_000 * 200 * seconds) // month
    assert await balance(pool, "revenue:volumes") == expected
    assert await balance(pool, f"customer:{user}") == -expected
    assert await problems(pool, stream) == []


async def test_the_ledger_tables_refuse_change_and_verify_catches_a_break(
    nc: NatsClient, ledger_nc: NatsClient, pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    stream = Stream(store)
    user, instance = f"u-{new_id()}", new_id()
    await stream.emit("instance", instance, T0, created(volume_in_gb=0), actor=user)
    await stream.emit("instance", instance, T0 + timedelta(seconds=1), InstanceRunning())
    last = await stream.emit(
        "instance", instance, T0 + timedelta(seconds=61), InstanceTerminated(lease_id="l")
    )
    ledger = ProjectionRunner(ledger_nc, pool, [LedgerProjection()])
    await ledger.start()
    await until_applied(pool, last)
    await ledger.stop()
    assert await problems(pool, stream) == []

    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (
            "UPDATE ledger_postings SET amount_micros = 1",
            "DELETE FROM ledger_postings",
            "TRUNCATE ledger_postings",
            "UPDATE ledger_sessions SET quantity = 1",
            "DELETE FROM ledger_session_ends",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        # A posting slipped in by hand: verify must see the session overpaid and the balance off.
        conn.execute(
            "INSERT INTO ledger_postings (id, at, user_id, debit, credit, amount_micros, kind,"
            " session_id) SELECT 'forged', now(), user_id, 'customer:' || user_id,"
            " 'revenue:instances.gpu', 1, 'usage', id FROM ledger_sessions"
            " WHERE resource_id = %s AND meter = 'instance.gpu'",
            (instance,),
        )
        # And one for a session that never was.
        conn.execute(
            "INSERT INTO ledger_postings (id, at, user_id, debit, credit, amount_micros, kind,"
            " session_id) VALUES ('orphan', now(), 'u', 'customer:u', 'revenue:volumes', 1,"
            " 'usage', 'no-such-session')"
        )
    found = await problems(pool, stream)
    assert any("posted" in p and "owes" in p for p in found), found
    assert any("balance of customer:" in p for p in found), found
    assert any("session no-such-session, which does not exist" in p for p in found), found
    # The rollups were not moved by the forged postings: the summaries disagree with them.
    assert any("summaries say" in p for p in found), found
