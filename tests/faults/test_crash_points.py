"""Hypothesis over crash points in the append -> project -> answer path (real NATS, PostgreSQL).

A run is a sequence of template commands. Each may "crash" at one point: before its append (the
runner dies), after its append but before the answer (the acknowledgement is lost), or the
projector dies after committing some batch. Whatever crashed is retried the way the product
retries it (the same command id again; a fresh projector from its checkpoint). At the end every
command took effect exactly once and the read model equals the fold of the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.container import ContainerConfig
from events.envelope import AggregateRef, Envelope
from events.ids import new_id
from events.store import Append, AppendOutcomeUnknown, JetStreamEventStore
from projections import checkpoints
from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.runner import ProjectionRunner
from services.command_wire import CommandEnvelope
from services.deciders.catalog import DECIDERS
from services.deciders.template import CreateTemplate, TemplateState, UpdateTemplate
from services.processes.runner import DeciderRunner

TEMPLATES = PROJECTIONS["templates"]
AT = datetime(2026, 11, 30, tzinfo=UTC)
CRASHES = ("none", "before_append", "ack_lost", "projector_after_commit")


class CrashingStore(JetStreamEventStore):
    """The real store; `crash` makes the next append fail before or after it really happens."""

    crash = "none"

    async def append_all(self, writes: Sequence[Append]) -> list[int]:
        crash, self.crash = self.crash, "none"
        if crash == "before_append":
            raise AppendOutcomeUnknown("crashed before the append")
        sequences = await super().append_all(writes)
        if crash == "ack_lost":
            raise AppendOutcomeUnknown("the acknowledgement was lost")
        return sequences


@pytest.fixture
async def pool(database_url: str) -> Any:
    await migrate(database_url)
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await p.open()
    yield p
    await p.close()


commands = st.lists(
    st.tuples(st.sampled_from(("create", "rename")), st.integers(0, 3), st.sampled_from(CRASHES)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=commands)
async def test_any_crash_point_ends_with_every_command_applied_once(
    nc: NatsClient,
    projector_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    steps: list[tuple[str, int, str]],
) -> None:
    store = CrashingStore(nc)
    await store.ensure_stream()
    runner = DeciderRunner(store, DECIDERS)
    projector = ProjectionRunner(projector_nc, pool, [TEMPLATES])
    await projector.start()
    ids = [new_id() for _ in range(4)]
    applied: dict[str, list[str]] = {i: [] for i in ids}  # template id -> command ids taken
    try:
        for n, (kind, which, crash) in enumerate(steps):
            template_id = ids[which]
            if kind == "create":
                command: msgspec.Struct = CreateTemplate(
                    actor="u", at=AT, name=f"t{n}", container=ContainerConfig(image_name="i:1")
                )
            else:
                command = UpdateTemplate(actor="u", at=AT, name=f"renamed-{n}")
            envelope = CommandEnvelope.wrap(template_id, command, "c")
            if crash == "projector_after_commit":
                projector.crash_after_commit = True
            elif crash != "none":
                store.crash = crash
            reply = await runner.handle("template", envelope)
            while reply.error is not None and reply.error.code == 503:
                reply = await runner.handle("template", envelope)  # the caller retries
            taken = await _taken_by(store, template_id, envelope.id)
            # The answer is the truth: success means applied (once), a refusal means not at all.
            assert taken == (reply.error is None and reply.sequence > 0), (reply, taken)
            if taken:
                applied[template_id].append(envelope.id)
            projector.crash_after_commit = False
        last = max([0, *[await _last(store, i) for i in ids]])
        await _wait_checkpoint(pool, last)
        for template_id in ids:
            events = await store.load(AggregateRef("template", template_id))
            causes = [e.causation_id for e in events]
            assert causes == applied[template_id], "each command exactly once, in order"
            assert await _row(pool, template_id) == DECIDERS["template"].fold(None, events)
    finally:
        await projector.stop()


async def _taken_by(store: JetStreamEventStore, template_id: str, command_id: str) -> bool:
    events: list[Envelope] = await store.load(AggregateRef("template", template_id))
    return any(e.causation_id == command_id for e in events)


async def _last(store: JetStreamEventStore, template_id: str) -> int:
    events = await store.load(AggregateRef("template", template_id))
    return events[-1].sequence if events else 0


async def _wait_checkpoint(pool: AsyncConnectionPool[Any], sequence: int) -> None:
    for _ in range(400):
        async with pool.connection() as conn:
            if await checkpoints.read(conn, "templates") >= sequence:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the projection never reached {sequence}")


async def _row(pool: AsyncConnectionPool[Any], template_id: str) -> TemplateState | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT doc::text FROM templates WHERE id = %s", (template_id,))
        row = await cur.fetchone()
    return None if row is None else msgspec.json.decode(row[0], type=TemplateState)
