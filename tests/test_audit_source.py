"""Where an action came from, as the audit log records it: the api's client address rides on the
command and on every event the command makes; nobody but the api can put one there (the deciders
drop it on every other sender's subject), and events stored before it existed still decode."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NatsClient

from events.catalog import decode_event
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.instance import InstanceRunning
from events.store import JetStreamEventStore
from events.subjects import agent_command_subject
from services.deciders.instance import ReportObservation, StopInstance
from services.nats_permissions import API_USER, agent_user
from tests.security.test_command_actors import (
    BOB,
    Deciders,
    deciders,  # noqa: F401  (fixture)
    now,
)


async def sources(nc: NatsClient, instance_id: str) -> dict[str, str | None]:
    events = await JetStreamEventStore(nc).load(AggregateRef("instance", instance_id))
    return {e.type: e.source for e in events}


async def test_the_api_address_reaches_the_events_and_no_one_else_can_set_one(
    deciders: Deciders,  # noqa: F811
    nc: NatsClient,
) -> None:
    instance_id = await deciders.instance_on("h1")
    api = await deciders.bus(API_USER)
    reply = await api.send(
        "instance", instance_id, StopInstance(actor=BOB, at=now()), "t", source="127.0.0.1"
    )
    assert reply.error is None
    deciders.server.add_agent("h1")
    agent = await deciders.bus(agent_user("h1"))
    # An agent's report claiming an address: the deciders drop it.
    await agent.send_on(
        agent_command_subject("h1", "instance"),
        instance_id,
        ReportObservation(actor="system:agent:h1", at=now(), observed="stopped"),
        "t",
        source="127.0.0.9",
    )
    found = await sources(nc, instance_id)
    # Placement's own create (no wire, no address), the customer's stop, the host's report.
    assert found["InstanceCreated"] is None
    assert found["InstanceStopRequested"] == "127.0.0.1"
    assert found["InstanceStopped"] is None


def test_events_without_a_source_are_written_and_read_as_before() -> None:
    event = Envelope(
        id="e-1",
        type="InstanceRunning",
        version=1,
        aggregate=AggregateRef("instance", "i-1"),
        occurred_at=datetime(2026, 11, 30, tzinfo=UTC),
        recorded_at=datetime(2026, 11, 30, tzinfo=UTC),
        actor="system:agent:h1",
        correlation_id="c",
        data=InstanceRunning(),
    )
    stored = encode_envelope(event)
    assert b"source" not in stored  # what older readers see is unchanged
    assert decode_event(stored, 7).source is None
    sourced = encode_envelope(msgspec.structs.replace(event, source="127.0.0.1"))
    assert decode_event(sourced, 8).source == "127.0.0.1"
