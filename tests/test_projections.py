"""Projections on a real nats-server and PostgreSQL: exactly-once effects, rebuilds, restarts."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.container import ContainerChanges, ContainerConfig
from events.envelope import Envelope
from events.ids import new_id
from events.store import JetStreamEventStore
from projections import checkpoints
from projections.catalog import PROJECTIONS
from projections.migrate import available, migrate
from projections.rebuild import rebuild
from projections.runner import ProjectionRunner
from services.cli.embedded import EmbeddedNats
from services.command_wire import CommandEnvelope
from services.deciders.catalog import DECIDERS
from services.deciders.template import (
    CreateTemplate,
    DeleteTemplate,
    TemplateState,
    UpdateTemplate,
)
from services.nats_permissions import DECIDERS_USER, PROJECTOR_USER
from services.processes.runner import DeciderRunner
from tests.servers import connect_as

TEMPLATES = PROJECTIONS["templates"]
AT = datetime(2026, 11, 29, tzinfo=UTC)


async def send(runner: DeciderRunner, aggregate_id: str, cmd: msgspec.Struct) -> int:
    reply = await runner.handle(
        "template",
        CommandEnvelope(
            id=new_id(),
            aggregate_id=aggregate_id,
            correlation_id="test",
            command=msgspec.Raw(msgspec.json.encode(cmd)),
        ),
    )
    assert reply.error is None, reply.error
    return reply.sequence


async def checkpoint(pool: AsyncConnectionPool[Any], name: str) -> int:
    async with pool.connection() as conn:
        return (await checkpoints.read_all(conn)).get(name, 0)


async def wait_for_checkpoint(pool: AsyncConnectionPool[Any], name: str, seq: int) -> None:
    for _ in range(200):
        if await checkpoint(pool, name) >= seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {seq} (at {await checkpoint(pool, name)})")


async def template_row(pool: AsyncConnectionPool[Any], template_id: str) -> TemplateState:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT doc::text FROM templates WHERE id = %s", (template_id,))
        row = await cur.fetchone()
    assert row is not None
    return msgspec.json.decode(row[0], type=TemplateState)


def dump(database_url: str, table: str) -> bytes:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        out = bytearray()
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
    return bytes(out)


@pytest.fixture
async def runner(nc: NatsClient) -> DeciderRunner:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    return DeciderRunner(store, DECIDERS)


async def test_migrations_are_versioned_and_applied_once(database_url: str) -> None:
    first = await migrate(database_url)
    assert first == [v for v, _n, _s in available()]
    assert await migrate(database_url) == []


async def test_a_crash_after_a_commit_has_no_second_effect(
    projector_nc: NatsClient, pool: AsyncConnectionPool[Any], runner: DeciderRunner
) -> None:
    template_id = new_id()
    await send(
        runner,
        template_id,
        CreateTemplate(actor="u", at=AT, name="t", container=ContainerConfig(image_name="i:1")),
    )
    last = await send(runner, template_id, UpdateTemplate(actor="u", at=AT, name="t2"))

    # This projector "dies" right after every commit and starts again from its checkpoint.
    crashing = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    crashing.crash_after_commit = True
    await crashing.start()
    try:
        await wait_for_checkpoint(pool, "templates", last)
        more = await send(runner, template_id, UpdateTemplate(actor="u", at=AT, name="t3"))
        await wait_for_checkpoint(pool, "templates", more)
    finally:
        await crashing.stop()
    row = await template_row(pool, template_id)
    assert row.name == "t3"
    assert row.version == 3, "every event applied exactly once"


async def test_projector_killed_at_random_points_loses_nothing(
    projector_nc: NatsClient,
    operator_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    runner: DeciderRunner,
    database_url: str,
) -> None:
    """Projectors cancelled at arbitrary instants (mid-pull, mid-transaction) while writes go on:
    the table ends equal to a rebuild from sequence 1."""
    rng = random.Random(8)
    ids = [new_id() for _ in range(40)]
    last = 0

    async def write(template_id: str, n: int) -> int:
        if n == 0:
            command: msgspec.Struct = CreateTemplate(
                actor="u", at=AT, name="t", container=ContainerConfig(image_name="i")
            )
        else:
            command = UpdateTemplate(actor="u", at=AT, name=f"t{n}")
        return await send(runner, template_id, command)

    for round_ in range(8):
        projector = ProjectionRunner(projector_nc, pool, [TEMPLATES])
        await projector.start()
        sequences = await asyncio.gather(*(write(t, round_) for t in ids))
        last = max(last, *sequences)
        await asyncio.sleep(rng.uniform(0, 0.05))
        await projector.stop()
    projector = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    await projector.start()
    try:
        await wait_for_checkpoint(pool, "templates", last)
    finally:
        await projector.stop()
    live = dump(database_url, "templates")
    for template_id in ids:
        assert (await template_row(pool, template_id)).version == 8
    await rebuild(database_url, operator_nc, TEMPLATES)
    assert dump(database_url, "templates") == live


async def test_rebuild_reproduces_the_tables_byte_for_byte(
    projector_nc: NatsClient,
    operator_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    runner: DeciderRunner,
    database_url: str,
) -> None:
    ids = [new_id() for _ in range(30)]
    last = 0
    for i, template_id in enumerate(ids):
        owner = f"user-{i % 3}"
        await send(
            runner,
            template_id,
            CreateTemplate(
                actor=owner,
                at=AT,
                name=f"t{i}",
                container=ContainerConfig(image_name="i:1", env={"K": str(i)}),
            ),
        )
        last = await send(
            runner,
            template_id,
            UpdateTemplate(
                actor=owner, at=AT, container=ContainerChanges(ports=[f"{8000 + i}/http"])
            ),
        )
        if i % 4 == 0:
            last = await send(runner, template_id, DeleteTemplate(actor=owner, at=AT))
    projector = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    await projector.start()
    await wait_for_checkpoint(pool, "templates", last)
    live = dump(database_url, "templates")
    assert live.count(b"\n") == 30

    rows, _seconds = await rebuild(database_url, operator_nc, TEMPLATES)
    assert rows == 30
    assert dump(database_url, "templates") == live

    # Rebuilding while the projector runs, then writing more, keeps both in step.
    more = await send(runner, ids[1], UpdateTemplate(actor="user-1", at=AT, name="renamed"))
    await wait_for_checkpoint(pool, "templates", more)
    await projector.stop()
    assert (await template_row(pool, ids[1])).name == "renamed"
    after_more = dump(database_url, "templates")
    await rebuild(database_url, operator_nc, TEMPLATES)
    assert dump(database_url, "templates") == after_more


def test_rebuild_command_line(tmp_path: Any, database_url: str, nats_server: EmbeddedNats) -> None:
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "GPUWORKER_NATS_CREDENTIALS": str(nats_server.credentials_path),
        "GPUWORKER_SECRET_KEY": "x" * 43 + "=",
        "GPUWORKER_JWT_SECRET": "j",
    }

    async def seed() -> None:
        client = await connect_as(nats_server, DECIDERS_USER)
        store = JetStreamEventStore(client)
        await store.ensure_stream()
        r = DeciderRunner(store, DECIDERS)
        for i in range(3):
            await send(
                r,
                new_id(),
                CreateTemplate(
                    actor="u", at=AT, name=f"t{i}", container=ContainerConfig(image_name="i")
                ),
            )
        await client.close()

    asyncio.run(seed())
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "projections", "rebuild", "templates"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt templates: 3 rows" in result.stdout
    assert dump(database_url, "templates").count(b"\n") == 3
    unknown = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "projections", "rebuild", "nope"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 2 and "unknown projection" in unknown.stderr


async def test_projector_resumes_after_nats_restart(
    nats_server: EmbeddedNats, pool: AsyncConnectionPool[Any]
) -> None:
    """The nats-py pitfall: a pull subscription that goes deaf after the server restarts."""
    reconnects = 0

    async def on_reconnect() -> None:
        nonlocal reconnects
        reconnects += 1

    async def quiet(*_args: Any) -> None:
        return None

    client = await connect_as(
        nats_server,
        PROJECTOR_USER,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=on_reconnect,
        error_cb=quiet,
        disconnected_cb=quiet,
    )
    writer = await connect_as(
        nats_server,
        DECIDERS_USER,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
        disconnected_cb=quiet,
    )
    store = JetStreamEventStore(writer)
    await store.ensure_stream()
    deciders = DeciderRunner(store, DECIDERS)
    projector = ProjectionRunner(client, pool, [TEMPLATES])
    await projector.start()
    try:
        first = new_id()
        seq = await send(
            deciders,
            first,
            CreateTemplate(actor="u", at=AT, name="a", container=ContainerConfig(image_name="i")),
        )
        await wait_for_checkpoint(pool, "templates", seq)

        nats_server.stop()
        await asyncio.sleep(1.0)
        nats_server.start()
        for _ in range(100):
            if reconnects and client.is_connected and writer.is_connected:
                break
            await asyncio.sleep(0.1)
        assert reconnects >= 1

        second = new_id()
        seq2 = await send(
            deciders,
            second,
            CreateTemplate(actor="u", at=AT, name="b", container=ContainerConfig(image_name="i")),
        )
        await wait_for_checkpoint(pool, "templates", seq2)
        assert (await template_row(pool, second)).name == "b"
    finally:
        await projector.stop()
        await client.close()
        await writer.close()


async def test_two_projector_replicas_lose_nothing(
    projector_nc: NatsClient, pool: AsyncConnectionPool[Any], runner: DeciderRunner
) -> None:
    """Two replicas of one projection share a stream: every event is applied once, none skipped
    (with a shared ack-all durable, one replica's ack covered batches the other never applied)."""
    one = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    two = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    await one.start()
    await two.start()
    try:
        ids = [new_id() for _ in range(600)]
        last = 0

        async def create(template_id: str) -> int:
            return await send(
                runner,
                template_id,
                CreateTemplate(
                    actor="u", at=AT, name="t", container=ContainerConfig(image_name="i:1")
                ),
            )

        for start in range(0, len(ids), 50):
            sequences = await asyncio.gather(*(create(t) for t in ids[start : start + 50]))
            last = max(last, *sequences)
        await wait_for_checkpoint(pool, "templates", last)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM templates WHERE id = ANY(%s)", (ids,))
            present = {row[0] for row in await cur.fetchall()}
        assert len(present) == len(ids), f"{len(ids) - len(present)} acknowledged rows missing"
    finally:
        await one.stop()
        await two.stop()


async def recorded_halt(pool: AsyncConnectionPool[Any], name: str) -> str:
    """Why the projection halted, once that is recorded for /health (fails if it never is)."""
    for _ in range(100):
        async with pool.connection() as conn:
            status = (await checkpoints.statuses(conn))[name]
        if status.halted:
            return status.halted
        await asyncio.sleep(0.05)
    raise AssertionError(f"no halt of {name} is recorded for /health")


async def test_an_event_that_cannot_be_applied_halts_the_projection_loudly(
    nc: NatsClient,
    projector_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    runner: DeciderRunner,
) -> None:
    good = new_id()
    before = await send(
        runner,
        good,
        CreateTemplate(actor="u", at=AT, name="a", container=ContainerConfig(image_name="i")),
    )
    ack = await nc.jetstream().publish(f"ev.template.{new_id()}.TemplateCreated", b"{not json")
    after = await send(
        runner,
        new_id(),
        CreateTemplate(actor="u", at=AT, name="b", container=ContainerConfig(image_name="i")),
    )
    projector = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    await projector.start()
    try:
        await wait_for_checkpoint(pool, "templates", before)
        await recorded_halt(pool, "templates")  # fails unless the halt is recorded for /health
        # Stopped at the bad event: neither it nor anything after it was stepped over.
        assert await checkpoint(pool, "templates") == before < ack.seq < after
    finally:
        await projector.stop()


class RefusedByPostgres:
    """The templates read model, except that PostgreSQL itself refuses the rows of a template
    named "poison" (a data error, as jsonb once refused U+0000), every time it is tried."""

    name = TEMPLATES.name
    filter_subjects = TEMPLATES.filter_subjects

    def __init__(self, pipelined: bool) -> None:
        # Pipelined, the refusal surfaces only at a later sync (the commit), after the batch's
        # other statements were sent.
        self.pipelined = pipelined

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        await TEMPLATES.apply(conn, events)
        if any(getattr(e.data, "name", None) == "poison" for e in events):
            await conn.execute("SELECT 1 / 0")


@pytest.mark.parametrize("pipelined", [False, True], ids=["careful", "pipelined"])
async def test_an_event_postgres_refuses_halts_the_projection_loudly(
    projector_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    runner: DeciderRunner,
    pipelined: bool,
) -> None:
    """Before, such an error was taken for "database unavailable" and retried every second,
    forever, with /health showing the projection current. A pipelined batch that fails is
    applied again the careful way, so the events before the refused one are still kept."""

    def create(name: str) -> CreateTemplate:
        return CreateTemplate(
            actor="u", at=AT, name=name, container=ContainerConfig(image_name="i")
        )

    before = await send(runner, new_id(), create("a"))
    poison = await send(runner, new_id(), create("poison"))
    after = await send(runner, new_id(), create("b"))
    projector = ProjectionRunner(projector_nc, pool, [RefusedByPostgres(pipelined)])
    await projector.start()
    try:
        await wait_for_checkpoint(pool, "templates", before)
        halted = await recorded_halt(pool, "templates")
        assert f"event {poison}" in halted and "division by zero" in halted
        assert await checkpoint(pool, "templates") == before < poison < after
    finally:
        await projector.stop()


async def test_roles_starting_together_migrate_once_without_failing(database_url: str) -> None:
    """The projector and the ledger both migrate at start; neither may fail for the other."""
    results = await asyncio.gather(*(migrate(database_url) for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [v for v, _n, _s in available()], "each migration applied exactly once"


class Lingering:
    """The templates read model, gathering each batch for `linger_s` and noting its size."""

    name = "templates"
    filter_subjects = TEMPLATES.filter_subjects
    pipelined = True
    linger_s = 1.0

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        self.batches.append(len(events))
        await TEMPLATES.apply(conn, events)


async def test_a_lingering_projection_applies_a_burst_in_one_batch(
    projector_nc: NatsClient, pool: AsyncConnectionPool[Any], runner: DeciderRunner
) -> None:
    """The audit log lingers (projections/audit.py): events a moment apart share a batch."""
    lingering = Lingering()
    projector = ProjectionRunner(projector_nc, pool, [lingering])
    await projector.start()
    try:
        last = 0
        for n in range(5):
            create = CreateTemplate(
                actor="u", at=AT, name=f"t{n}", container=ContainerConfig(image_name="i")
            )
            last = await send(runner, new_id(), create)
            await asyncio.sleep(0.02)
        await wait_for_checkpoint(pool, "templates", last)
    finally:
        await projector.stop()
    assert lingering.batches == [5]
