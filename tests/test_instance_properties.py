"""Property tests for GPU placement and the instance lifecycle over a simulated fleet.

A few hosts (1-4 hosts x 1-8 GPUs of 1-2 types, 1-2 data centers, SECURE/COMMUNITY) are registered
by folding RegisterHost decisions; then hypothesis drives the HOST and INSTANCE deciders the way
PlacementService, GpuReleaser, HostMonitor and the host agents do (see tests/fleet_strategies.py):
creates (on a possibly stale fleet view), stops, starts (also racing a second start or a terminate
between the allocation and StartInstance), restarts, terminates, container deaths, image pull
failures, late reports of anything, host loss and recovery, and lease-ending releases delivered
late, out of order and more than once. After every step:

- GPUs: every allocation is a GPU of its host; free + allocated == inventory per host and GPU type;
  the GPUs of live leases are pairwise disjoint and each is allocated on the instance's host under
  its lease id, exactly gpu_count GPUs of its gpu_type;
- no leak: every allocation belongs to a live lease or to a lease-ending event still on its way to
  the releaser; once those are delivered, every allocation is a live lease;
- HOLDS_GPUS: an instance in it holds a lease; one outside it holds none, except TERMINATING (its
  container still runs on its GPUs until the host confirms);
- `actions` matches what decide accepts (checked on the state, without applying);
- fold equivalence for every host and instance.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from events.catalog import decode_event
from events.envelope import encode_envelope
from events.host import GpusAllocated, GpusReleased, HostGpu
from events.instance import InstanceRunning, InstanceStopped, InstanceTerminated
from services.deciders.host import HOST, Lease, MarkHostLost
from services.deciders.instance import (
    HOLDS_GPUS,
    INSTANCE,
    STARTABLE,
    STOPPABLE,
    InstanceState,
    RestartInstance,
    StartInstance,
    StopInstance,
    TerminateInstance,
)
from services.deciders.placement import best_fit, candidates, free_counts
from services.errors import Conflict, GpuWorkerError, NotFound
from tests import fleet_strategies as fs

# --- invariants -----------------------------------------------------------------------------------


def check_gpus(fleet: fs.PureFleet) -> None:
    live: dict[str, tuple[str, str]] = {}  # gpu uuid -> (instance, lease) of a live lease
    for instance_id, aggregate in fleet.instances.items():
        state: InstanceState = aggregate.state
        if state.lease_id is None:
            assert state.gpu_uuids == [], f"{instance_id} lists GPUs without a lease"
            continue
        host = fleet.host_state(state.host_id)
        held = host.held_by(instance_id).get(state.lease_id, [])
        assert sorted(held) == sorted(state.gpu_uuids), (
            f"{instance_id} ({state.status}) believes it holds {state.gpu_uuids} under"
            f" {state.lease_id}; the host has {held} under that lease"
        )
        assert len(held) == state.gpu_count
        types = {g.uuid: g.gpu_type_id for g in host.gpus}
        assert all(types[u] == state.gpu_type_id for u in held)
        for uuid in held:
            assert uuid not in live, f"{uuid} held by {live.get(uuid)} and {instance_id}"
            live[uuid] = (instance_id, state.lease_id)

    pending = set(fleet.pending)
    for host_id in fleet.hosts:
        here = fleet.host_state(host_id)
        inventory = Counter(g.gpu_type_id for g in here.gpus)
        types = {g.uuid: g.gpu_type_id for g in here.gpus}
        assert set(here.allocations) <= set(types), "an allocation of a GPU the host lacks"
        allocated = Counter(types[u] for u in here.allocations)
        for gpu_type, total in inventory.items():
            assert len(here.free(gpu_type)) + allocated[gpu_type] == total
        for uuid, lease in here.allocations.items():
            owner = (lease.instance_id, lease.lease_id)
            assert live.get(uuid) == owner or owner in pending, (
                f"leak: {uuid} on {host_id} is held by {owner}, which is neither a live lease"
                " nor a lease whose release is on its way"
            )
            if not pending:
                assert live.get(uuid) == owner
    # A lease, once ended, never comes back to life.
    assert not {lease for _, lease in live.values()} & {lease for _, lease in pending}


def check_holds(state: InstanceState) -> None:
    if state.status in HOLDS_GPUS:
        assert state.lease_id is not None, f"{state.id} is {state.status} without GPUs"
    elif state.status != "TERMINATING":
        assert state.lease_id is None, f"{state.id} is {state.status} yet holds a lease"


def probes(state: InstanceState, actor: str) -> dict[str, Any]:
    at = state.last_status_change
    return {
        "start": StartInstance(actor=actor, at=at, gpu_uuids=["GPU-probe"], lease_id="probe"),
        "stop": StopInstance(actor=actor, at=at),
        "restart": RestartInstance(actor=actor, at=at),
        "terminate": TerminateInstance(actor=actor, at=at),
    }


def check_actions(state: InstanceState) -> None:
    """`actions` is what decide accepts; checked on the state, nothing applied."""
    for action, command in probes(state, state.owner_id).items():
        try:
            data = INSTANCE.decide(state, command)
        except GpuWorkerError as err:
            refused: GpuWorkerError | None = err
        else:
            refused = None
        if action in state.actions:
            assert refused is None and data, f"{action} listed for {state.status}, but {refused!r}"
        elif state.status == "TERMINATED":
            assert type(refused) is NotFound
        elif action == "terminate" and state.status == "TERMINATING":
            assert refused is None and data == [], "a second terminate is a no-op"
        else:
            assert type(refused) is Conflict, f"{action} on {state.status}: {refused!r}"
    other = next(o for o in fs.OWNERS if o != state.owner_id)
    for command in probes(state, other).values():
        with pytest.raises(NotFound):
            INSTANCE.decide(state, command)


def check_fold(fleet: fs.PureFleet) -> None:
    for aggregate in (*fleet.hosts.values(), *fleet.instances.values()):
        assert aggregate.decider.fold(None, aggregate.events) == aggregate.state


def check_wire(fleet: fs.PureFleet) -> None:
    """Fold equivalence through the wire format, as a runner reads events back from the store."""
    for aggregate in (*fleet.hosts.values(), *fleet.instances.values()):
        wire = [
            decode_event(encode_envelope(e), sequence=n)
            for n, e in enumerate(aggregate.events, start=1)
        ]
        assert aggregate.decider.fold(None, wire) == aggregate.state
        reply = msgspec.json.encode(aggregate.state)
        assert msgspec.json.decode(reply, type=aggregate.decider.state_type) == aggregate.state


def allocations(fleet: fs.PureFleet) -> dict[str, dict[str, Lease]]:
    return {h: dict(a.state.allocations) for h, a in fleet.hosts.items()}


# --- the machine ----------------------------------------------------------------------------------

OBSERVATIONS = ("provisioning", "running", "exited", "failed", "stopped", "terminated", "host_lost")
# What the host agent reports for an instance in each status, when its work there is done.
AGENT_NEXT = {
    "PENDING": "provisioning",
    "PROVISIONING": "running",
    "RESTARTING": "running",
    "STOPPING": "stopped",
    "TERMINATING": "terminated",
}


RUNNING = frozenset({"RUNNING"})
LIVE = frozenset({"PENDING", "PROVISIONING", "RUNNING", "RESTARTING"})
# Statuses where the agent reports nothing on its own: news arriving there is late news.
QUIET = frozenset({"RUNNING", "STOPPED", "EXITED", "FAILED"})
LATE_OBSERVATIONS = (*OBSERVATIONS, "running", "running", "exited", "stopped")


class FleetMachine(RuleBasedStateMachine):
    fleet: fs.PureFleet

    @initialize(specs=fs.host_specs())
    def build(self, specs: list[fs.HostSpec]) -> None:
        self.fleet = fs.PureFleet(specs)
        self.requests = fs.fitting_requests(specs)
        note(f"fleet: {specs}")

    # --- helpers ---

    def _instance(
        self, data: st.DataObject, label: str, prefer: frozenset[str] = frozenset()
    ) -> str:
        """Mostly one in a status of `prefer` (the command's happy path), else mostly one not
        terminated yet (a terminated one refuses everything), sometimes any."""
        every = sorted(self.fleet.instances)
        status = {i: self.fleet.instances[i].state.status for i in every}
        preferred = [i for i in every if status[i] in prefer]
        alive = [i for i in every if status[i] != "TERMINATED"]
        roll = data.draw(st.integers(0, 7), label="which")
        pool = preferred if preferred and roll < 5 else alive if alive and roll < 7 else every
        return data.draw(st.sampled_from(pool), label=label)

    def _state(self, instance_id: str) -> InstanceState:
        state = self.fleet.instance_state(instance_id)
        assert state is not None
        return state

    def _report(self, instance_id: str, observed: str, **extra: Any) -> list[Any]:
        """An agent's report; a terminated instance no longer exists, even for its host."""
        try:
            return self.fleet.report(instance_id, observed, **extra)
        except NotFound:
            assert self._state(instance_id).status == "TERMINATED"
            return []

    def has_instances(self) -> bool:
        return bool(self.fleet.instances)

    # --- placement ---

    def _bring_up(self, instance_id: str) -> None:
        """The agent's bring-up: provisioning, then running."""
        assert self.fleet.report(instance_id, "provisioning")
        assert self.fleet.report(instance_id, "running") == [InstanceRunning()]

    @rule(data=st.data(), up=st.booleans())
    def create(self, data: st.DataObject, up: bool) -> None:
        fleet = self.fleet
        request = data.draw(self.requests, label="request")
        existing = sorted(fleet.instances)
        reuse = bool(existing) and data.draw(st.integers(0, 7), label="reuse id?") == 0
        instance_id = (
            data.draw(st.sampled_from(existing), label="reused id")
            if reuse
            else fleet.new_id("inst")
        )
        request = msgspec.structs.replace(request, at=fleet.now())
        fresh = fleet.view_is_fresh()
        truth = candidates(
            [a.state for a in fleet.hosts.values()],
            request.gpu_type_id,
            request.gpu_count,
            request.datacenter_id,
            request.cloud_type,
        )
        before = allocations(fleet)
        try:
            state = fleet.place(instance_id, request)
        except GpuWorkerError as err:
            note(f"create {instance_id} {request.gpu_count}x{request.gpu_type_id}: {err!r}")
            assert type(err) is Conflict, err
            assert allocations(fleet) == before, "a refused create kept an allocation"
            if "no capacity" in err.message:
                if fresh:
                    assert not truth, "placement said no capacity on a fresh view"
            else:
                assert reuse and "already exists" in err.message, err.message
            return
        note(f"created {instance_id} on {state.host_id} with {state.gpu_uuids}")
        assert not reuse, "a second instance under one id"
        assert state.status == "PENDING" and state.desired_status == "RUNNING"
        assert state.host_id in {h.id for h in truth}
        if fresh:
            assert state.host_id == truth[0].id, "not the best fit"
        host = fleet.host_state(state.host_id)
        assert state.datacenter_id == host.datacenter_id
        assert request.datacenter_id in (None, host.datacenter_id)
        assert host.cloud_type == request.cloud_type
        assert not set(state.gpu_uuids) & set(before[state.host_id])
        if up:
            self._bring_up(instance_id)

    @rule()
    def sync_view(self) -> None:
        self.fleet.sync_view()

    @precondition(has_instances)
    @rule(
        data=st.data(),
        race=st.sampled_from(("none", "none", "start", "terminate")),
        up=st.booleans(),
    )
    def start(self, data: st.DataObject, race: str, up: bool) -> None:
        fleet = self.fleet
        instance_id = self._instance(data, "start", STARTABLE)
        state = self._state(instance_id)
        actor = state.owner_id
        host = fleet.host_state(state.host_id)
        can_allocate = host.available and len(host.free(state.gpu_type_id)) >= state.gpu_count
        raced: list[object] = []

        def between() -> None:
            # A concurrent command lands between the allocation and StartInstance.
            try:
                if race == "start":
                    raced.append(fleet.start(instance_id, actor))
                else:
                    raced.append(
                        fleet.instance(instance_id, TerminateInstance(actor=actor, at=fleet.now()))
                    )
            except GpuWorkerError as err:
                raced.append(err)

        before = allocations(fleet)
        try:
            started = fleet.start(instance_id, actor, between if race != "none" else None)
        except GpuWorkerError as err:
            note(f"start {instance_id} ({state.status}, race {race}): {err!r} / {raced!r}")
            assert type(err) in (Conflict, NotFound), err
            if state.status == "TERMINATED":
                assert type(err) is NotFound
            elif state.status not in STARTABLE or not can_allocate:
                assert allocations(fleet) == before, "a refused start kept an allocation"
                if state.status in STARTABLE:
                    assert "no capacity" in err.message
            else:
                # Only a concurrent command can make it fail now; the lease it took is released
                # (check_gpus would see a leak otherwise).
                assert race != "none", f"a start that could allocate was refused: {err}"
                if race == "start":
                    assert isinstance(raced[0], InstanceState), "both starts were refused"
            return
        note(f"started {instance_id} with {started.lease_id} (race {race}: {raced!r})")
        assert state.status in STARTABLE and can_allocate
        assert race == "none" or (race == "start" and isinstance(raced[0], GpuWorkerError))
        assert started.status == "PENDING" and started.lease_id not in (None, state.lease_id)
        if up and race == "none":
            self._bring_up(instance_id)

    @precondition(has_instances)
    @rule(data=st.data(), report=st.booleans())
    def stop(self, data: st.DataObject, report: bool) -> None:
        instance_id = self._instance(data, "stop", STOPPABLE)
        state = self._state(instance_id)
        try:
            self.fleet.instance(
                instance_id, StopInstance(actor=state.owner_id, at=self.fleet.now())
            )
        except GpuWorkerError as err:
            assert state.status not in STOPPABLE, err
            return
        assert state.status in STOPPABLE
        if report:
            (stopped,) = self.fleet.report(instance_id, "stopped")
            assert stopped == InstanceStopped(lease_id=state.lease_id)

    @precondition(has_instances)
    @rule(data=st.data(), report=st.booleans())
    def restart(self, data: st.DataObject, report: bool) -> None:
        instance_id = self._instance(data, "restart", RUNNING)
        state = self._state(instance_id)
        try:
            self.fleet.instance(
                instance_id, RestartInstance(actor=state.owner_id, at=self.fleet.now())
            )
        except GpuWorkerError:
            assert state.status != "RUNNING"
            return
        assert self._state(instance_id).status == "RESTARTING"
        if report:
            assert self.fleet.report(instance_id, "running") == [InstanceRunning()]

    @precondition(has_instances)
    @rule(data=st.data(), report=st.booleans())
    def terminate(self, data: st.DataObject, report: bool) -> None:
        instance_id = self._instance(data, "terminate")
        state = self._state(instance_id)
        try:
            self.fleet.instance(
                instance_id, TerminateInstance(actor=state.owner_id, at=self.fleet.now())
            )
        except GpuWorkerError as err:
            assert state.status == "TERMINATED" and type(err) is NotFound
            return
        if report:
            lease = self._state(instance_id).lease_id
            assert lease == state.lease_id
            assert self.fleet.report(instance_id, "terminated") == [
                InstanceTerminated(lease_id=lease)
            ]

    # --- the host agent ---

    @precondition(has_instances)
    @rule(data=st.data())
    def agent_progress(self, data: st.DataObject) -> None:
        instance_id = self._instance(data, "progress", frozenset(AGENT_NEXT))
        observed = AGENT_NEXT.get(self._state(instance_id).status)
        if observed is not None:
            assert self.fleet.report(instance_id, observed), f"{observed} changed nothing"

    @precondition(has_instances)
    @rule(
        data=st.data(),
        news=st.sampled_from(("container died", "image pull failed")),
        code=st.sampled_from((0, 1, 137)),
    )
    def container_fails(self, data: st.DataObject, news: str, code: int) -> None:
        """The container died, or its image could not be pulled (mostly while coming up)."""
        instance_id = self._instance(data, news, LIVE)
        if news == "container died":
            self._report(instance_id, "exited", exit_code=code)
        else:
            self._report(instance_id, "failed", reason="pull access denied")

    @precondition(has_instances)
    @rule(data=st.data(), observed=st.sampled_from(LATE_OBSERVATIONS))
    def late_report(self, data: st.DataObject, observed: str) -> None:
        """A report in any status, mostly one where the agent has nothing to say: late,
        duplicated, or from an agent acting on old news."""
        self._report(self._instance(data, "late report", QUIET), observed)

    @precondition(has_instances)
    @rule(
        data=st.data(),
        observed=st.sampled_from(["provisioning", "running", "exited", "failed", "stopped"]),
    )
    def report_about_an_earlier_run(self, data: st.DataObject, observed: str) -> None:
        """A report delayed past a stop and a new start: it names the lease of the run it saw,
        which is not the instance's lease now. It must change nothing (not stop or fail the run
        that holds the GPUs now)."""
        instance_id = self._instance(data, "stale report", LIVE)
        before = self._state(instance_id)
        stale = f"earlier-than-{before.lease_id}"
        assert self._report(instance_id, observed, lease_id=stale) == []
        assert self._state(instance_id) == before

    # --- the host monitor ---

    @rule(data=st.data(), tell_instances=st.booleans())
    def host_lost(self, data: st.DataObject, tell_instances: bool) -> None:
        host_id = data.draw(st.sampled_from(sorted(self.fleet.hosts)), label="lost host")
        self.fleet.mark_lost(host_id)
        assert not self.fleet.host_state(host_id).available
        if tell_instances:
            for instance_id, aggregate in sorted(self.fleet.instances.items()):
                if aggregate.state.host_id == host_id:
                    self._report(instance_id, "host_lost")

    @rule(data=st.data(), by_registration=st.booleans())
    def host_recovered(self, data: st.DataObject, by_registration: bool) -> None:
        host_id = data.draw(st.sampled_from(sorted(self.fleet.hosts)), label="recovered host")
        before = self.fleet.host_state(host_id).allocations
        self.fleet.mark_recovered(host_id, by_registration)
        after = self.fleet.host_state(host_id)
        assert after.available and after.allocations == before

    # --- the GPU releaser ---

    @precondition(lambda self: bool(self.fleet.pending))
    @rule(data=st.data())
    def deliver_release(self, data: st.DataObject) -> None:
        """Any pending lease-ending event, not necessarily the oldest."""
        fleet = self.fleet
        index = data.draw(st.integers(0, len(fleet.pending) - 1), label="release")
        instance_id, lease_id = fleet.pending.pop(index)
        host = fleet.host_state(self._state(instance_id).host_id)
        held = host.held_by(instance_id).get(lease_id, [])
        released = fleet.deliver(instance_id, lease_id)
        fleet.delivered.append((instance_id, lease_id))
        if held:
            assert released == [
                GpusReleased(instance_id=instance_id, lease_id=lease_id, gpu_uuids=held)
            ]
        else:
            assert released == []

    @precondition(lambda self: bool(self.fleet.delivered))
    @rule(data=st.data())
    def redeliver_release(self, data: st.DataObject) -> None:
        """At least once: delivered again, maybe after newer allocations, it frees nothing."""
        instance_id, lease_id = data.draw(st.sampled_from(self.fleet.delivered), label="again")
        assert (instance_id, lease_id) not in self.fleet.pending
        before = allocations(self.fleet)
        assert self.fleet.deliver(instance_id, lease_id) == []
        assert allocations(self.fleet) == before

    @rule()
    def deliver_all(self) -> None:
        while self.fleet.pending:
            self.fleet.delivered.append(self.fleet.pending[0])
            self.fleet.deliver(*self.fleet.pending.pop(0))

    # --- after every step ---

    @invariant()
    def fleet_invariants(self) -> None:
        fleet = self.fleet
        check_gpus(fleet)
        for aggregate in fleet.instances.values():
            check_holds(aggregate.state)
            check_actions(aggregate.state)
        check_fold(fleet)

    def teardown(self) -> None:
        fleet = getattr(self, "fleet", None)
        if fleet is None:
            return
        self.deliver_all()
        check_gpus(fleet)
        held = {
            (lease.instance_id, lease.lease_id)
            for a in fleet.hosts.values()
            for lease in a.state.allocations.values()
        }
        assert held == {
            (i, a.state.lease_id) for i, a in fleet.instances.items() if a.state.lease_id
        }, "after every release was delivered, hosts and instances disagree on the leases"
        check_wire(fleet)


FleetMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFleet = FleetMachine.TestCase


# --- directed examples ----------------------------------------------------------------------------


def one_host(gpus: int = 2) -> fs.PureFleet:
    return fs.PureFleet(
        [
            fs.HostSpec(
                id="host-0",
                datacenter_id="EU-RO-1",
                cloud_type="SECURE",
                gpus=tuple(
                    HostGpu(index=i, uuid=f"GPU-0-{i}", gpu_type_id=fs.GPU_TYPES[0], memory_mb=1)
                    for i in range(gpus)
                ),
            )
        ]
    )


def place(fleet: fs.PureFleet, instance_id: str, count: int = 1, **changes: Any) -> InstanceState:
    request = fs.place_instance(fs.OWNERS[0], fs.GPU_TYPES[0], count, None, "SECURE")
    return fleet.place(instance_id, msgspec.structs.replace(request, **changes))


def test_no_capacity_is_a_conflict_that_says_so() -> None:
    fleet = one_host(gpus=1)
    place(fleet, "a")
    elsewhere: list[dict[str, Any]] = [
        {},
        {"cloud_type": "COMMUNITY"},
        {"datacenter_id": "US-TX-3"},
    ]
    for changes in elsewhere:
        with pytest.raises(Conflict, match="no capacity"):
            place(fleet, "b", **changes)
    with pytest.raises(Conflict, match="no capacity"):
        place(fleet, "c", gpu_type_id=fs.ABSENT_GPU_TYPE)
    with pytest.raises(Conflict, match="no capacity"):
        place(fleet, "d", count=2)
    assert set(fleet.instances) == {"a"}
    # A lost host has no capacity either, even with free GPUs.
    fleet = one_host(gpus=2)
    fleet.mark_lost("host-0")
    with pytest.raises(Conflict, match="no capacity"):
        place(fleet, "e")
    # ... also when the view has not heard of the loss yet: the host refuses the allocation.
    fleet.mark_recovered("host-0", by_registration=False)
    fleet.sync_view()
    fleet.hosts["host-0"].decide(
        MarkHostLost(actor=fs.MONITOR_ACTOR, at=fleet.now(), reason="gone")
    )
    with pytest.raises(Conflict, match="no capacity"):
        place(fleet, "f")
    assert fleet.host_state("host-0").allocations == {}


def test_a_late_release_of_an_old_lease_frees_nothing_of_the_new_one() -> None:
    fleet = one_host(gpus=1)
    first = place(fleet, "a")
    fleet.instance("a", StopInstance(actor=first.owner_id, at=fleet.now()))
    fleet.report("a", "stopped")
    ((_, old_lease),) = fleet.pending
    fleet.deliver("a", old_lease)
    again = fleet.start("a", first.owner_id)
    assert again.lease_id is not None
    assert again.gpu_uuids == first.gpu_uuids and again.lease_id != old_lease
    # The old lease's release arrives again (redelivery) after the new allocation.
    assert fleet.deliver("a", old_lease) == []
    allocations = fleet.host_state("host-0").allocations
    assert list(allocations) == [again.gpu_uuids[0]]
    lease = allocations[again.gpu_uuids[0]]
    assert (lease.instance_id, lease.lease_id) == ("a", again.lease_id)


def test_a_start_racing_a_start_keeps_one_lease() -> None:
    fleet = one_host(gpus=2)
    state = place(fleet, "a")
    fleet.report("a", "exited", exit_code=1)
    fleet.deliver(*fleet.pending.pop())

    def second_start() -> None:
        fleet.start("a", state.owner_id)

    with pytest.raises(Conflict):
        fleet.start("a", state.owner_id, between=second_start)
    started = fleet.instance_state("a")
    assert started is not None and started.status == "PENDING"
    assert fleet.host_state("host-0").held_by("a") == {started.lease_id: started.gpu_uuids}


def test_allocation_events_name_the_lease() -> None:
    fleet = one_host(gpus=2)
    state = place(fleet, "a", count=2)
    assert state.lease_id is not None
    (event,) = [e.data for e in fleet.hosts["host-0"].events if isinstance(e.data, GpusAllocated)]
    assert event == GpusAllocated(
        instance_id="a", lease_id=state.lease_id, gpu_uuids=state.gpu_uuids
    )
    assert HOST.fold(None, fleet.hosts["host-0"].events) == fleet.host_state("host-0")


@pytest.mark.parametrize("ending", ["exited", "failed"])
def test_a_late_running_report_does_not_revive_an_instance_without_gpus(ending: str) -> None:
    """Found by FleetMachine: a "running" after "exited"/"failed" made the instance RUNNING with
    no lease, while its released GPU went to another instance."""
    fleet = one_host(gpus=1)
    place(fleet, "a")
    fleet.report("a", ending)
    fleet.deliver(*fleet.pending.pop())
    other = place(fleet, "b")
    assert fleet.report("a", "running") == []
    state = fleet.instance_state("a")
    assert state is not None and state.status == ending.upper() and state.lease_id is None
    assert fleet.host_state("host-0").held_by("b") == {other.lease_id: other.gpu_uuids}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_best_fit_picks_what_candidates_ranks_first(data: st.DataObject) -> None:
    """The fleet view's fast path (precomputed free counts) chooses exactly the host that the
    plain ranking would, whatever the fleet, the claims in flight and the hosts already tried."""
    fleet = fs.PureFleet(data.draw(fs.host_specs()))
    hosts = {host_id: fleet.host_state(host_id) for host_id in fleet.specs}
    for host in hosts.values():
        taken = data.draw(st.lists(st.sampled_from([g.uuid for g in host.gpus]), unique=True))
        hosts[host.id] = msgspec.structs.replace(
            host, allocations={u: Lease("x", "l") for u in taken}
        )
    gpu_type = data.draw(
        st.sampled_from(sorted({g.gpu_type_id for h in hosts.values() for g in h.gpus}))
    )
    count = data.draw(st.integers(1, 4))
    cloud = data.draw(st.sampled_from(["SECURE", "COMMUNITY"]))
    dc = data.draw(st.sampled_from([None, *sorted({h.datacenter_id for h in hosts.values()})]))
    claiming = {h: data.draw(st.integers(0, 2)) for h in hosts}
    tried = set(data.draw(st.lists(st.sampled_from(sorted(hosts)), unique=True)))
    free = {h.id: n for h in hosts.values() if (n := free_counts(h).get(gpu_type, 0))}
    ranked = [
        h.id
        for h in candidates(hosts.values(), gpu_type, count, dc, cloud, claiming)
        if h.id not in tried
    ]
    assert best_fit(free, hosts, count, dc, cloud, claiming, tried) == (
        ranked[0] if ranked else None
    )
