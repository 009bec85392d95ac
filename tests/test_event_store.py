"""The JetStream event store against a real nats-server: appends, loads, concurrency, dedupe."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from events.catalog import decode_event, version_of
from events.container import ContainerChanges, ContainerConfig
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.ids import new_id
from events.store import (
    Append,
    AppendOutcomeUnknown,
    EventStoreUnavailable,
    JetStreamEventStore,
    WrongExpectedSequence,
)
from events.subjects import STREAM
from events.template import TemplateCreated, TemplateUpdated
from services.cli.embedded import EmbeddedNats
from services.command_wire import CommandEnvelope
from services.deciders.catalog import DECIDERS
from services.deciders.template import CreateTemplate, TemplateState, UpdateTemplate
from services.nats_permissions import DECIDERS_USER
from services.processes.runner import DeciderRunner
from tests.servers import connect_as, new_nats

AT = datetime(2026, 11, 29, tzinfo=UTC)


def envelope(ref: AggregateRef, data: msgspec.Struct) -> Envelope:
    return Envelope(
        id=new_id(),
        type=type(data).__name__,
        version=version_of(data),
        aggregate=ref,
        occurred_at=AT,
        recorded_at=AT,
        actor="user-1",
        correlation_id="c",
        data=data,
    )


def created(name: str = "t") -> TemplateCreated:
    return TemplateCreated(
        name=name,
        container=ContainerConfig(image_name="img:1"),
        readme="",
        is_public=False,
    )


@pytest.fixture
async def store(nc: NatsClient) -> JetStreamEventStore:
    s = JetStreamEventStore(nc)
    await s.ensure_stream()
    return s


async def test_append_then_load_in_order(store: JetStreamEventStore) -> None:
    ref = AggregateRef("template", new_id())
    other = AggregateRef("template", new_id())
    first = await store.append(ref, [envelope(ref, created())], expected_sequence=0)
    await store.append(other, [envelope(other, created("other"))], expected_sequence=0)
    last = await store.append(
        ref,
        [envelope(ref, TemplateUpdated(name="a")), envelope(ref, TemplateUpdated(name="b"))],
        expected_sequence=first,
    )
    events = await store.load(ref)
    assert [e.type for e in events] == ["TemplateCreated", "TemplateUpdated", "TemplateUpdated"]
    assert [e.data.name for e in events] == ["t", "a", "b"]
    assert events[-1].sequence == last
    assert all(e.aggregate == ref for e in events)
    # Loading after a sequence returns only what came later.
    later = await store.load(ref, after=first)
    assert [e.data.name for e in later] == ["a", "b"]


async def test_dotted_ids_stay_on_their_own_subject(store: JetStreamEventStore) -> None:
    ref = AggregateRef("template", "pytorch-cuda12-2.1")
    await store.append(ref, [envelope(ref, created())], expected_sequence=0)
    assert [e.aggregate.id for e in await store.load(ref)] == ["pytorch-cuda12-2.1"]
    assert await store.load(AggregateRef("template", "pytorch-cuda12-2")) == []


async def test_stale_writer_is_refused(store: JetStreamEventStore) -> None:
    ref = AggregateRef("template", new_id())
    seq = await store.append(ref, [envelope(ref, created())], expected_sequence=0)
    await store.append(ref, [envelope(ref, TemplateUpdated(name="x"))], expected_sequence=seq)
    with pytest.raises(WrongExpectedSequence):
        await store.append(ref, [envelope(ref, TemplateUpdated(name="y"))], expected_sequence=seq)
    with pytest.raises(WrongExpectedSequence):
        # A second create of the same aggregate (expected 0) is refused too.
        await store.append(ref, [envelope(ref, created())], expected_sequence=0)
    assert [e.data.name for e in await store.load(ref)] == ["t", "x"]


async def test_resent_event_is_deduplicated(store: JetStreamEventStore, nc: NatsClient) -> None:
    ref = AggregateRef("template", new_id())
    event = envelope(ref, created())
    seq = await store.append(ref, [event], expected_sequence=0)
    # The same event id published again (a retry after a lost ack) lands nowhere new.
    js = nc.jetstream()
    ack = await js.publish(
        f"ev.template.{ref.id}.TemplateCreated",
        encode_envelope(event),
        headers={"Nats-Msg-Id": event.id},
    )
    assert ack.duplicate
    assert ack.seq == seq
    assert len(await store.load(ref)) == 1
    info = await js.stream_info(STREAM)
    assert info.state.messages == 1


async def test_events_are_stored_as_versioned_json_and_upcast(
    store: JetStreamEventStore, nc: NatsClient, operator_nc: NatsClient
) -> None:
    ref = AggregateRef("template", new_id())
    v1 = {
        "id": new_id(),
        "type": "TemplateCreated",
        "version": 1,
        "aggregate": {"type": "template", "id": ref.id},
        "occurred_at": AT.isoformat(),
        "recorded_at": AT.isoformat(),
        "actor": "user-1",
        "correlation_id": "c",
        "data": {
            "name": "old",
            "image_name": "img:0",
            "docker_start_cmd": None,
            "container_disk_in_gb": 10,
            "volume_in_gb": 0,
            "volume_mount_path": "/workspace",
            "readme": "",
            "is_public": False,
        },
    }
    js = nc.jetstream()
    await js.publish(f"ev.template.{ref.id}.TemplateCreated", msgspec.json.encode(v1))
    (event,) = await store.load(ref)
    assert event.version == 3
    assert event.data == TemplateCreated(
        name="old",
        container=ContainerConfig(
            image_name="img:0",
            docker_start_cmd=None,
            container_disk_in_gb=10,
            volume_in_gb=0,
            volume_mount_path="/workspace",
            env={},
            ports=[],
        ),
        readme="",
        is_public=False,
    )
    # Read back raw, as an operator inspecting the stream would.
    raw = await operator_nc.jetstream().get_msg(STREAM, event.sequence)
    assert raw.data is not None
    assert msgspec.json.decode(raw.data)["version"] == 1, "stored events are never rewritten"
    assert decode_event(raw.data).data.container.env == {}


def command(aggregate_id: str, cmd: msgspec.Struct) -> CommandEnvelope:
    return CommandEnvelope(
        id=new_id(),
        aggregate_id=aggregate_id,
        correlation_id="c",
        command=msgspec.Raw(msgspec.json.encode(cmd)),
    )


async def test_two_runners_racing_on_one_aggregate_lose_no_update(
    store: JetStreamEventStore,
) -> None:
    template_id = new_id()
    owner = "user-1"
    first = DeciderRunner(store, DECIDERS)
    second = DeciderRunner(store, DECIDERS)
    created_reply = await first.handle(
        "template",
        command(
            template_id,
            CreateTemplate(
                actor=owner, at=AT, name="t", container=ContainerConfig(image_name="i:1")
            ),
        ),
    )
    assert created_reply.error is None
    # Both runners now hold the aggregate at the same sequence in their caches.
    await second.handle(
        "template", command(template_id, UpdateTemplate(actor=owner, at=AT, readme="warm"))
    )
    await first.handle(
        "template", command(template_id, UpdateTemplate(actor=owner, at=AT, readme="warm2"))
    )
    # A no-op on a cached state makes the second runner catch up: both now hold version 3.
    await second.handle(
        "template", command(template_id, UpdateTemplate(actor=owner, at=AT, readme="warm2"))
    )
    conflicts_before = first.conflicts + second.conflicts
    a, b = await asyncio.gather(
        first.handle(
            "template", command(template_id, UpdateTemplate(actor=owner, at=AT, name="from-a"))
        ),
        second.handle(
            "template",
            command(
                template_id,
                UpdateTemplate(
                    actor=owner, at=AT, container=ContainerChanges(image_name="from-b:1")
                ),
            ),
        ),
    )
    assert a.error is None and b.error is None
    assert first.conflicts + second.conflicts == conflicts_before + 1, (
        "exactly one writer loses the race, once, and retries on fresh state"
    )
    final = DECIDERS["template"].fold(None, await store.load(AggregateRef("template", template_id)))
    assert isinstance(final, TemplateState)
    assert final.name == "from-a" and final.container.image_name == "from-b:1", "no lost update"
    assert final.version == 5
    # Each runner's answer is the state it appended, at the sequence that holds it.
    states = [msgspec.json.decode(r.state, type=TemplateState) for r in (a, b)]
    assert sorted(s.version for s in states) == [4, 5]


async def test_a_decision_over_two_aggregates_lands_all_or_nothing(
    store: JetStreamEventStore,
) -> None:
    a, b = AggregateRef("template", new_id()), AggregateRef("template", new_id())
    first_a = await store.append(a, [envelope(a, created("a"))], expected_sequence=0)
    sequences = await store.append_all(
        [
            Append(a, [envelope(a, TemplateUpdated(name="a2"))], first_a),
            Append(b, [envelope(b, created("b")), envelope(b, TemplateUpdated(name="b2"))], 0),
        ]
    )
    loaded_a, loaded_b = await store.load(a), await store.load(b)
    assert sequences == [loaded_a[-1].sequence, loaded_b[-1].sequence]
    assert [e.sequence for e in loaded_b] == [sequences[0] + 1, sequences[0] + 2]

    # One stale expectation refuses the whole decision: neither aggregate changes.
    with pytest.raises(WrongExpectedSequence):
        await store.append_all(
            [
                Append(a, [envelope(a, TemplateUpdated(name="never"))], sequences[0]),
                Append(b, [envelope(b, TemplateUpdated(name="never"))], sequences[0]),
            ]
        )
    assert await store.load(a) == loaded_a
    assert await store.load(b) == loaded_b


async def test_a_resent_batch_is_recognised_as_stored(store: JetStreamEventStore) -> None:
    a, b = AggregateRef("template", new_id()), AggregateRef("template", new_id())
    writes = [Append(a, [envelope(a, created("a"))], 0), Append(b, [envelope(b, created("b"))], 0)]
    first = await store.append_all(writes)
    # The same envelopes again (a process that never saw the ack sends its decision again).
    assert await store.append_all(writes) == first
    assert len(await store.load(a)) == 1 and len(await store.load(b)) == 1


async def test_a_lost_acknowledgement_is_settled_not_reported_as_nothing_changed(
    nats_server: EmbeddedNats,
) -> None:
    """The server takes the append but its answer comes too late: the store sends the same
    event again, is told the aggregate moved, reads it back, finds its own event: success."""
    client = await connect_as(nats_server, DECIDERS_USER)
    try:
        store = JetStreamEventStore(client, timeout=0.3, patience_s=10)
        await store.ensure_stream()
        ref = AggregateRef("template", new_id())
        assert nats_server.process is not None
        pid = nats_server.process.pid
        os.kill(pid, signal.SIGSTOP)
        resume = asyncio.get_running_loop().call_later(0.8, os.kill, pid, signal.SIGCONT)
        try:
            sequence = await store.append(ref, [envelope(ref, created())], expected_sequence=0)
        finally:
            resume.cancel()
            os.kill(pid, signal.SIGCONT)
        (stored,) = await store.load(ref)
        assert stored.sequence == sequence
    finally:
        await client.close()


async def test_an_append_no_stream_listens_to_is_known_not_stored(tmp_path: Path) -> None:
    """No responders (no stream takes the subject: none yet, or its leader is being elected) means
    nothing was stored: the 503 says so instead of "may or may not have been applied"."""
    server = new_nats(tmp_path)
    try:
        client = await connect_as(server, DECIDERS_USER)
        try:
            store = JetStreamEventStore(client, timeout=0.5, patience_s=0.3)
            ref = AggregateRef("template", new_id())
            with pytest.raises(EventStoreUnavailable) as refused:
                await store.append(ref, [envelope(ref, created())], expected_sequence=0)
            assert not isinstance(refused.value, AppendOutcomeUnknown), refused.value
        finally:
            await client.close()
    finally:
        server.stop()


def _appends_observed() -> float:
    return float(REGISTRY.get_sample_value("gpuworker_event_append_seconds_count") or 0.0)


async def test_each_applied_decision_times_its_append_once(store: JetStreamEventStore) -> None:
    """gpuworker_event_append_seconds (README: the floor under every command's latency) counts
    the appends that happened: a decision that changes nothing appends nothing."""
    runner = DeciderRunner(store, DECIDERS)
    template_id = new_id()
    before = _appends_observed()
    create = CreateTemplate(actor="u", at=AT, name="t", container=ContainerConfig(image_name="i"))
    assert (await runner.handle("template", command(template_id, create))).error is None
    assert _appends_observed() == before + 1
    same = UpdateTemplate(actor="u", at=AT, name="t")
    assert (await runner.handle("template", command(template_id, same))).error is None
    assert _appends_observed() == before + 1, "nothing to append, nothing timed"
