"""Placement races and GPU release on a real nats-server.

Several independent decider stacks (DeciderRunner + FleetView + PlacementService, each on its own
NATS connection, as separate `deciders` replicas would be) race for the same GPUs: the host
aggregate's optimistic concurrency must hand each GPU to exactly one instance, and every loser
must get `409` "no capacity". Then the GpuReleaser gives back exactly the lease an event ended:
never twice, never a newer lease, never another instance's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from events.envelope import AggregateRef
from events.host import GpusReleased, HostGpu
from events.ids import new_id
from events.store import JetStreamEventStore
from events.subjects import STREAM
from services.cli.embedded import EmbeddedNats
from services.command_wire import CommandEnvelope, Reply
from services.deciders.catalog import DECIDERS
from services.deciders.host import HOST, HostState, RegisterHost, ReleaseGpus
from services.deciders.instance import InstanceState, ReportObservation, StopInstance
from services.nats_permissions import DECIDERS_USER
from services.processes import gpu_releaser
from services.processes.fleet_view import FleetView
from services.processes.gpu_releaser import GpuReleaser
from services.processes.placement_service import PlacementService, StartPlacedInstance
from services.processes.runner import DeciderRunner
from tests.fleet_strategies import GPU_TYPES, OWNERS, place_instance
from tests.servers import connect_as

GPU = GPU_TYPES[0]
OWNER = OWNERS[0]


def now() -> datetime:
    return datetime.now(UTC)


def envelope(aggregate_id: str, command: msgspec.Struct) -> CommandEnvelope:
    return CommandEnvelope(
        id=new_id(),
        aggregate_id=aggregate_id,
        correlation_id=new_id(),
        command=msgspec.Raw(msgspec.json.encode(command)),
    )


async def ok(reply: Awaitable[Reply]) -> Reply:
    answered = await reply
    assert answered.error is None, answered.error
    return answered


@dataclass
class Stack:
    """One deciders replica: its own connection, runner (and cache), fleet view and placement."""

    runner: DeciderRunner
    fleet: FleetView
    placement: PlacementService


@pytest.fixture
async def store(nc: NatsClient) -> JetStreamEventStore:
    s = JetStreamEventStore(nc)
    await s.ensure_stream()
    return s


@pytest.fixture
async def new_stack(nats_server: EmbeddedNats) -> AsyncIterator[Callable[[], Awaitable[Stack]]]:
    clients: list[NatsClient] = []
    fleets: list[FleetView] = []

    async def make() -> Stack:
        client = await connect_as(nats_server, DECIDERS_USER)
        clients.append(client)
        runner = DeciderRunner(JetStreamEventStore(client), DECIDERS)
        fleet = FleetView()
        await fleet.follow(client)
        fleets.append(fleet)
        return Stack(runner, fleet, PlacementService(runner, fleet))

    yield make
    for fleet in fleets:
        await fleet.stop()
    for client in clients:
        await client.close()


async def register(runner: DeciderRunner, host_id: str, gpus: int, datacenter: str) -> None:
    await ok(
        runner.handle(
            "host",
            envelope(
                host_id,
                RegisterHost(
                    actor=f"system:agent:{host_id}",
                    at=now(),
                    datacenter_id=datacenter,
                    cloud_type="SECURE",
                    gpus=[
                        HostGpu(index=i, uuid=f"GPU-{host_id}-{i}", gpu_type_id=GPU, memory_mb=1)
                        for i in range(gpus)
                    ],
                    inventory_source="declared",
                    runtime="simulated",
                ),
            ),
        )
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def seen_by_all(stacks: list[Stack], host_id: str) -> None:
    async def check() -> bool:
        return all(s.fleet.get(host_id) is not None for s in stacks)

    await eventually(check)


async def host_state(store: JetStreamEventStore, host_id: str) -> HostState:
    state = HOST.fold(None, await store.load(AggregateRef("host", host_id)))
    assert isinstance(state, HostState)
    return state


async def race(
    stacks: list[Stack], store: JetStreamEventStore, gpus: int, round_no: int, warm: bool
) -> None:
    """One host with `gpus` free GPUs, one PlaceInstance per stack, all at once."""
    host_id = f"race-{round_no}-{new_id()}"
    # A data center of its own: earlier rounds' hosts are no candidates.
    datacenter = f"DC-{host_id}"
    await register(stacks[0].runner, host_id, gpus, datacenter)
    await seen_by_all(stacks, host_id)
    if warm:
        # Every runner caches the host at the same sequence, so each decides its allocation on
        # that state: all but one append against a stale sequence, by construction.
        noop = ReleaseGpus(actor="system:test", at=now(), instance_id="nobody", lease_id="none")
        for stack in stacks:
            await ok(stack.runner.handle("host", envelope(host_id, noop)))
    conflicts = sum(s.runner.conflicts for s in stacks)
    ids = [f"inst-{round_no}-{n}-{new_id()}" for n in range(len(stacks))]
    command = place_instance(OWNER, GPU, 1, datacenter, "SECURE", at=now())
    replies = await asyncio.gather(
        *(s.placement.handle(envelope(i, command)) for s, i in zip(stacks, ids, strict=True))
    )

    winners: dict[str, InstanceState] = {}
    for instance_id, reply in zip(ids, replies, strict=True):
        if reply.error is None:
            winners[instance_id] = msgspec.json.decode(reply.state, type=InstanceState)
        else:
            assert reply.error.code == 409 and reply.error.type == "conflict", reply.error
            assert "no capacity" in reply.error.message, reply.error.message
            assert await store.load(AggregateRef("instance", instance_id)) == []
    assert len(winners) == min(gpus, len(stacks)), replies

    host = await host_state(store, host_id)
    assert len(host.allocations) == len(winners)
    for instance_id, state in winners.items():
        assert state.host_id == host_id and state.status == "PENDING"
        assert host.held_by(instance_id) == {state.lease_id: state.gpu_uuids}
        stored = DECIDERS["instance"].fold(
            None, await store.load(AggregateRef("instance", instance_id))
        )
        assert stored == state
    taken = [u for s in winners.values() for u in s.gpu_uuids]
    assert len(taken) == len(set(taken)), "one GPU given twice"
    if warm:
        lost = sum(s.runner.conflicts for s in stacks) - conflicts
        # Each stale allocation was refused by the store, re-decided on fresh state, and (if
        # the host was full by then) refused as "no capacity".
        assert lost >= len(stacks) - 1, lost
        if len(stacks) == 2:
            assert lost == 1


async def test_two_replicas_race_for_one_gpu(
    store: JetStreamEventStore, new_stack: Callable[[], Awaitable[Stack]]
) -> None:
    stacks = [await new_stack(), await new_stack()]
    for round_no in range(20):
        await race(stacks, store, gpus=1, round_no=round_no, warm=round_no % 2 == 0)


async def test_three_replicas_race_for_two_gpus(
    store: JetStreamEventStore, new_stack: Callable[[], Awaitable[Stack]]
) -> None:
    stacks = [await new_stack(), await new_stack(), await new_stack()]
    for round_no in range(10):
        await race(stacks, store, gpus=2, round_no=round_no, warm=round_no % 2 == 0)


async def test_gpu_releaser_frees_exactly_the_ended_lease(
    nc: NatsClient,
    operator_nc: NatsClient,
    store: JetStreamEventStore,
    new_stack: Callable[[], Awaitable[Stack]],
) -> None:
    stack = await new_stack()
    runner = stack.runner
    host_id = f"host-{new_id()}"
    await register(runner, host_id, gpus=2, datacenter="EU-RO-1")
    await seen_by_all([stack], host_id)
    states = {}
    for name in ("a", "b"):
        reply = await ok(
            stack.placement.handle(
                envelope(name, place_instance(OWNER, GPU, 1, "EU-RO-1", "SECURE", at=now()))
            )
        )
        states[name] = msgspec.json.decode(reply.state, type=InstanceState)
    a, b = states["a"], states["b"]
    old_lease = a.lease_id
    assert old_lease is not None
    assert a.host_id == b.host_id == host_id and a.gpu_uuids != b.gpu_uuids
    b_holds = {b.lease_id: b.gpu_uuids}

    releaser = GpuReleaser(nc, runner, stack.fleet)
    await releaser.start()
    try:
        await ok(runner.handle("instance", envelope("a", StopInstance(actor=OWNER, at=now()))))
        stopped = ReportObservation(actor=f"system:agent:{host_id}", at=now(), observed="stopped")
        await ok(runner.handle("instance", envelope("a", stopped)))

        async def a_released() -> bool:
            return "a" not in {
                lease.instance_id
                for lease in (await host_state(store, host_id)).allocations.values()
            }

        await eventually(a_released)
        host = await host_state(store, host_id)
        assert host.held_by("b") == b_holds and len(host.allocations) == 1
        events = await store.load(AggregateRef("host", host_id))
        (released,) = [e.data for e in events if isinstance(e.data, GpusReleased)]
        assert released == GpusReleased(instance_id="a", lease_id=old_lease, gpu_uuids=a.gpu_uuids)

        # The same lease-ending event handled again (at least once delivery): nothing more.
        await releaser.release("a", old_lease)
        await releaser.release("a", old_lease)
        assert await store.load(AggregateRef("host", host_id)) == events
    finally:
        await releaser.stop()

    # `a` starts again on the freed GPU, under a new lease...
    reply = await ok(
        stack.placement.handle(envelope("a", StartPlacedInstance(actor=OWNER, at=now())))
    )
    again = msgspec.json.decode(reply.state, type=InstanceState)
    assert again.status == "PENDING" and again.lease_id not in (None, old_lease)
    # ... and then the releaser's consumer is lost and rebuilt: it replays every instance event,
    # the old InstanceStopped among them. That old lease's release must free nothing now.
    await operator_nc.jetstream().delete_consumer(STREAM, gpu_releaser.DURABLE)
    before = await store.load(AggregateRef("host", host_id))
    replay = GpuReleaser(nc, runner, stack.fleet)
    await replay.start()
    try:

        async def replayed() -> bool:
            return replay.released >= 1

        await eventually(replayed)
        await releaser.release("a", old_lease)
    finally:
        await replay.stop()
    assert await store.load(AggregateRef("host", host_id)) == before
    host = await host_state(store, host_id)
    assert host.held_by("a") == {again.lease_id: again.gpu_uuids}
    assert host.held_by("b") == b_holds


async def test_a_placement_sent_again_is_answered_not_repeated(
    store: JetStreamEventStore, new_stack: Callable[[], Awaitable[Stack]]
) -> None:
    """The api's request timed out and the same command (same id: same Idempotency-Key) arrives
    again, at the same replica and at another one, also at the same moment."""
    one, two = await new_stack(), await new_stack()
    host_id = f"host-{new_id()}"
    await register(one.runner, host_id, gpus=4, datacenter=f"DC-{host_id}")
    await seen_by_all([one, two], host_id)
    command = envelope(
        f"inst-{new_id()}", place_instance(OWNER, GPU, 1, f"DC-{host_id}", "SECURE", at=now())
    )
    together = await asyncio.gather(one.placement.handle(command), two.placement.handle(command))
    later = [await one.placement.handle(command), await two.placement.handle(command)]
    for reply in (*together, *later):
        assert reply.error is None, reply.error
    states = [msgspec.json.decode(r.state, type=InstanceState) for r in (*together, *later)]
    assert len({(s.id, s.lease_id, tuple(s.gpu_uuids)) for s in states}) == 1, states
    host = await host_state(store, host_id)
    assert len(host.allocations) == 1, "one GPU, one lease, however often the command came"
    events = await store.load(AggregateRef("instance", command.aggregate_id))
    assert [e.type for e in events] == ["InstanceCreated"]

    # The lease and the instance were one atomic append: adjacent in the stream.
    allocation = [
        e for e in await store.load(AggregateRef("host", host_id)) if e.type == "GpusAllocated"
    ]
    assert [e.sequence + 1 for e in allocation] == [events[0].sequence]


async def test_a_command_sent_again_is_answered_with_the_state_not_refused(
    store: JetStreamEventStore, new_stack: Callable[[], Awaitable[Stack]]
) -> None:
    one, two = await new_stack(), await new_stack()
    host_id = f"host-{new_id()}"
    await register(one.runner, host_id, gpus=1, datacenter=f"DC-{host_id}")
    await seen_by_all([one], host_id)
    instance_id = f"inst-{new_id()}"
    await ok(
        one.placement.handle(
            envelope(instance_id, place_instance(OWNER, GPU, 1, f"DC-{host_id}", "SECURE"))
        )
    )
    stop = envelope(instance_id, StopInstance(actor=OWNER, at=now()))
    first = await ok(one.runner.handle("instance", stop))
    # A second stop with a new id is refused (it is STOPPING) ...
    refused = await two.runner.handle(
        "instance", envelope(instance_id, StopInstance(actor=OWNER, at=now()))
    )
    assert refused.error is not None and refused.error.code == 409
    # ... but the same stop sent again, to either replica, is answered: it happened.
    for runner in (one.runner, two.runner):
        again = await ok(runner.handle("instance", stop))
        assert msgspec.json.decode(again.state, type=InstanceState).status == "STOPPING"
        assert again.sequence >= first.sequence
    stops = [
        e
        for e in await store.load(AggregateRef("instance", instance_id))
        if e.type == "InstanceStopRequested"
    ]
    assert len(stops) == 1


async def test_a_command_past_its_deadline_is_not_applied(
    store: JetStreamEventStore, new_stack: Callable[[], Awaitable[Stack]]
) -> None:
    stack = await new_stack()
    host_id = f"host-{new_id()}"
    late = CommandEnvelope.wrap(
        host_id,
        RegisterHost(
            actor=f"system:agent:{host_id}",
            at=now(),
            datacenter_id="EU-RO-1",
            cloud_type="SECURE",
            gpus=[],
            inventory_source="declared",
            runtime="simulated",
        ),
        "c",
        deadline=now().timestamp() - 1,
    )
    reply = await stack.runner.handle("host", late)
    assert reply.error is not None and reply.error.code == 503, reply
    assert "expired" in reply.error.message and "nothing was changed" in reply.error.message
    assert await store.load(AggregateRef("host", host_id)) == []
