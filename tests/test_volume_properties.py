"""Property tests for the network-volume decider (services/deciders/volume.py).

One volume is driven through arbitrary interleavings of create, rename, grow and shrink, delete,
attach and detach of a few instances, and storage-host reports (provisioned / resized / failed /
deleted), issued by its owner, another user, an operator (`system:deciders`), placement, the GPU
releaser and the storage host's agent (`system:agent:h1`). Commands are applied the way
`DeciderRunner` applies them (tests/test_decider_properties.py `Run`): a refusal leaves the state
as it was, otherwise the decided events are wrapped and folded. After every step:

- a per-command model of the decider's answer: the refusal type (and, where the user reads it,
  its message), or exactly which events;
- sizes stay in 10..4000 and never shrink; provisioned_gb <= size_gb and never shrinks;
- every status change is one of the lifecycle's edges (below) and is made by the one kind of
  command allowed to make it;
- attachments are distinct, and a volume being deleted has none;
- fold equivalence, in memory and after an encode/decode round trip of every envelope.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from events.volume import (
    VolumeAttached,
    VolumeCreated,
    VolumeDeleted,
    VolumeDeleteRequested,
    VolumeDetached,
    VolumeGrown,
    VolumeProvisioned,
    VolumeProvisioningFailed,
    VolumeRenamed,
    VolumeResized,
)
from services.deciders.decider import is_system
from services.deciders.volume import (
    MAX_SIZE_GB,
    MIN_SIZE_GB,
    VOLUME,
    AttachVolume,
    CreateVolume,
    DeleteVolume,
    DetachVolume,
    ReportVolume,
    UpdateVolume,
    VolumeState,
    VolumeStatus,
)
from services.errors import BadRequest, Conflict, GpuWorkerError, NotFound
from tests import decider_strategies as ds
from tests.test_decider_properties import Run, check_replay

SETTINGS = settings(max_examples=100, deadline=None)
MAX_STEPS = 40

OWNER, OTHER, OPERATOR = ds.OWNER, ds.OTHER, ds.SYSTEM
AGENT = "system:agent:h1"
PLACEMENT = "system:placement"
RELEASER = "system:gpu-releaser"
INSTANCES = ("inst-1", "inst-2", "inst-3")

STATUSES: frozenset[str] = frozenset(get_args(VolumeStatus))
# The lifecycle in the module's docstring: CREATING -> AVAILABLE -> DELETING -> DELETED, or FAILED.
# A delete is accepted in every status it can see that is not already DELETING (a volume still
# being made, or one whose provisioning failed, can be deleted too).
LIFECYCLE = ("CREATING", "AVAILABLE", "DELETING", "DELETED")
EDGES: dict[tuple[str, str], type] = {
    ("CREATING", "AVAILABLE"): ReportVolume,
    ("AVAILABLE", "DELETING"): DeleteVolume,
    ("DELETING", "DELETED"): ReportVolume,
    ("CREATING", "FAILED"): ReportVolume,
    ("FAILED", "DELETING"): DeleteVolume,
    ("CREATING", "DELETING"): DeleteVolume,
}


def test_the_edges_cover_the_modules_statuses() -> None:
    assert {"CREATING", "AVAILABLE", "DELETING", "DELETED", "FAILED"} == STATUSES
    assert {s for edge in EDGES for s in edge} == STATUSES
    assert all(edge in EDGES for edge in itertools.pairwise(LIFECYCLE))


# --- commands -------------------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from(("training-data", "renamed", " padded ")),
    st.sampled_from(("", " ", "\t\n", "\u3000")),
    st.text(max_size=10),
)
# Around the bounds, anywhere in range, and anything at all.
absolute_sizes = st.one_of(
    st.sampled_from((MIN_SIZE_GB - 1, MIN_SIZE_GB, MAX_SIZE_GB, MAX_SIZE_GB + 1, 0, -1)),
    st.integers(MIN_SIZE_GB, MAX_SIZE_GB),
    st.integers(-(2**40), 2**40),
)
user_actors = st.sampled_from((OWNER, OWNER, OWNER, OTHER, OPERATOR))
instances = st.sampled_from(INSTANCES)


def _create(actor: st.SearchStrategy[str]) -> st.SearchStrategy[CreateVolume]:
    return st.builds(
        CreateVolume,
        actor=actor,
        at=st.just(ds.BASE_TIME),
        name=names,
        size_gb=st.one_of(absolute_sizes, st.integers(MIN_SIZE_GB, 500)),
        datacenter_id=st.just("US-TX-3"),
        host_id=st.just("h1"),
        price_per_gb_month_micros=st.just(70_000),
        rate_card_version=st.just("2026-01"),
    )


valid_create = st.builds(
    CreateVolume,
    actor=st.just(OWNER),
    at=st.just(ds.BASE_TIME),
    name=st.sampled_from(("training-data", " padded ", "x")),
    size_gb=st.one_of(st.sampled_from((MIN_SIZE_GB, MAX_SIZE_GB)), st.integers(MIN_SIZE_GB, 500)),
    datacenter_id=st.just("US-TX-3"),
    host_id=st.just("h1"),
    price_per_gb_month_micros=st.just(70_000),
    rate_card_version=st.just("2026-01"),
)


class Relative(msgspec.Struct, frozen=True):
    """A size the harness resolves on the state of the moment (see `resolve`): the current size
    plus `delta`, or (with `seen`) one of the sizes the volume has had, picked by `delta`."""

    delta: int
    seen: bool = False


sizes = st.one_of(
    st.builds(Relative, st.integers(-50, 50)),
    st.builds(Relative, st.integers(0, 63), st.just(True)),
    absolute_sizes,
)


def resolve(command: Any, run: Run) -> Any:
    size = getattr(command, "size_gb", None)
    if not isinstance(size, Relative):
        return command
    if size.seen:
        seen = _sizes_seen(run) or [100]
        return msgspec.structs.replace(command, size_gb=seen[size.delta % len(seen)])
    current = run.state.size_gb if run.state is not None else 100
    return msgspec.structs.replace(command, size_gb=current + size.delta)


# Sizes are drawn relative to the volume's current size (a little up or down, or an earlier size)
# as well as absolutely; a host reports a size it was asked for, the current one or an earlier one,
# and sometimes one it never was.
commands = st.one_of(
    _create(st.sampled_from((OWNER, OTHER))),
    st.builds(
        UpdateVolume,
        actor=user_actors,
        at=st.just(ds.BASE_TIME),
        name=st.none() | names,
        size_gb=st.none() | sizes,
    ),
    st.builds(UpdateVolume, actor=user_actors, at=st.just(ds.BASE_TIME), size_gb=sizes),
    st.builds(DeleteVolume, actor=user_actors, at=st.just(ds.BASE_TIME)),
    st.builds(
        AttachVolume,
        actor=st.sampled_from((OWNER, OWNER, OTHER, PLACEMENT)),
        at=st.just(ds.BASE_TIME),
        instance_id=instances,
    ),
    st.builds(AttachVolume, actor=st.just(OWNER), at=st.just(ds.BASE_TIME), instance_id=instances),
    st.builds(
        DetachVolume,
        actor=st.sampled_from((RELEASER, PLACEMENT, OWNER, OTHER)),
        at=st.just(ds.BASE_TIME),
        instance_id=instances,
    ),
    st.builds(
        ReportVolume,
        actor=st.sampled_from((AGENT, AGENT, AGENT, OWNER, OTHER)),
        at=st.just(ds.BASE_TIME),
        observed=st.sampled_from(("provisioned", "resized", "failed", "deleted")),
        size_gb=st.none() | sizes,
        reason=st.none() | st.just("disk full"),
    ),
    st.builds(
        ReportVolume,
        actor=st.just(AGENT),
        at=st.just(ds.BASE_TIME),
        observed=st.sampled_from(("provisioned", "failed", "deleted")),
    ),
    # What the agent really sends after a grow: the size it read, current or already outgrown.
    st.builds(
        ReportVolume,
        actor=st.just(AGENT),
        at=st.just(ds.BASE_TIME),
        observed=st.just("resized"),
        size_gb=st.one_of(
            st.just(Relative(0)), st.builds(Relative, st.integers(0, 63), st.just(True))
        ),
    ),
)


# --- the model ------------------------------------------------------------------------------------


def _in_range(size: int) -> bool:
    return MIN_SIZE_GB <= size <= MAX_SIZE_GB


def expected(state: VolumeState | None, command: Any) -> list[msgspec.Struct] | type:
    """What the decider must answer: the events, or the refusal's type."""
    if isinstance(command, CreateVolume):
        if state is not None:
            return Conflict
        if not _in_range(command.size_gb) or not command.name.strip():
            return BadRequest
        return [
            VolumeCreated(
                name=command.name,
                size_gb=command.size_gb,
                datacenter_id=command.datacenter_id,
                host_id=command.host_id,
                price_per_gb_month_micros=command.price_per_gb_month_micros,
                rate_card_version=command.rate_card_version,
            )
        ]
    if (
        state is None
        or state.status == "DELETED"
        or not (command.actor == state.owner_id or is_system(command.actor))
    ):
        return NotFound
    if isinstance(command, UpdateVolume):
        if state.status in ("DELETING", "DELETED"):
            return Conflict
        events: list[msgspec.Struct] = []
        if command.name is not None and command.name != state.name:
            if not command.name.strip():
                return BadRequest
            events.append(VolumeRenamed(command.name))
        if command.size_gb is not None and command.size_gb != state.size_gb:
            if command.size_gb < state.size_gb or not _in_range(command.size_gb):
                return BadRequest
            events.append(VolumeGrown(size_gb=command.size_gb))
        return events
    if isinstance(command, DeleteVolume):
        if state.status == "DELETING":
            return []
        return Conflict if state.attached else [VolumeDeleteRequested()]
    if isinstance(command, AttachVolume):
        if state.status not in ("CREATING", "AVAILABLE"):
            return Conflict
        if command.instance_id in state.attached:
            return []
        return [VolumeAttached(instance_id=command.instance_id)]
    if isinstance(command, DetachVolume):
        if command.instance_id not in state.attached:
            return []
        return [VolumeDetached(instance_id=command.instance_id)]
    assert isinstance(command, ReportVolume)
    if not is_system(command.actor):
        return NotFound
    if command.observed == "provisioned":
        return [VolumeProvisioned()] if state.status == "CREATING" else []
    if command.observed == "failed":
        if state.status != "CREATING":
            return []
        return [VolumeProvisioningFailed(reason=command.reason or "provisioning failed")]
    if command.observed == "deleted":
        return [VolumeDeleted()] if state.status == "DELETING" else []
    size = command.size_gb or 0
    # Progress only; and never more than the volume was asked to be.
    if state.provisioned_gb < size <= state.size_gb:
        return [VolumeResized(size_gb=size)]
    return []


def _bad_name(previous: VolumeState | None, command: Any) -> bool:
    name = getattr(command, "name", None)
    if name is None or (previous is not None and name == previous.name):
        return False
    return not name.strip()


def check_message(previous: VolumeState | None, command: Any, refusal: GpuWorkerError) -> None:
    """The refusals a user reads say what is wrong."""
    assert refusal.message.strip()
    if isinstance(command, DeleteVolume) and isinstance(refusal, Conflict):
        assert previous is not None and previous.attached
        for instance_id in previous.attached:
            assert instance_id in refusal.message, refusal.message
    if isinstance(command, AttachVolume) and isinstance(refusal, Conflict):
        assert previous is not None and previous.status in refusal.message, refusal.message
    if not isinstance(refusal, BadRequest):
        return
    size = getattr(command, "size_gb", None)
    if isinstance(command, CreateVolume):
        assert ("size" if not _in_range(command.size_gb) else "name") in refusal.message
    elif _bad_name(previous, command):
        assert "name" in refusal.message, refusal.message
    else:
        assert previous is not None and size is not None
        assert "size" in refusal.message, refusal.message
        if size < previous.size_gb:
            assert "only grow" in refusal.message, refusal.message
        else:
            assert f"{MIN_SIZE_GB} and {MAX_SIZE_GB}" in refusal.message, refusal.message


def check_step(previous: VolumeState | None, command: Any, outcome: Any, run: Run) -> None:
    want = expected(previous, command)
    if isinstance(want, type):
        assert type(outcome) is want, f"expected {want.__name__}, got {outcome!r}"
        assert isinstance(outcome, GpuWorkerError)
        check_message(previous, command, outcome)
        assert run.state is previous
        return
    assert outcome == want, f"expected {want!r}, got {outcome!r}"
    state: VolumeState | None = run.state
    if previous is None or state is None:
        return
    # Sizes only grow; the host never holds more than was asked for, and never gives any back.
    assert state.size_gb >= previous.size_gb
    assert state.provisioned_gb >= previous.provisioned_gb
    # Status: one of the lifecycle's edges, made by the one kind of command allowed to make it.
    if state.status != previous.status:
        edge = (previous.status, state.status)
        assert edge in EDGES, f"{edge} is not a volume lifecycle edge ({command!r})"
        assert isinstance(command, EDGES[edge]), f"{edge} made by {command!r}"
    # Who owns the volume never changes, nor where it lives.
    assert (state.owner_id, state.datacenter_id, state.host_id) == (
        previous.owner_id,
        previous.datacenter_id,
        previous.host_id,
    )


def invariant_holds(run: Run) -> None:
    state: VolumeState | None = run.state
    if state is None:
        assert run.events == []
        return
    assert state.status in STATUSES
    assert _in_range(state.size_gb)
    assert 0 <= state.provisioned_gb <= state.size_gb
    assert state.name.strip()
    assert len(set(state.attached)) == len(state.attached)
    if state.status in ("DELETING", "DELETED"):
        assert state.attached == ()
    if state.status == "AVAILABLE":
        assert state.provisioned_gb > 0
    if state.status == "FAILED":
        assert state.failure_reason
    if state.status in ("CREATING", "AVAILABLE"):
        assert state.failure_reason is None
    assert state.version == len(run.events)
    assert state.owner_id == run.events[0].actor


def step(data: st.DataObject, run: Run, command: Any) -> Any:
    previous = run.state
    outcome = run.apply(command)
    note(f"{command!r} -> {outcome!r}")
    event(
        f"{type(command).__name__}"
        + (f"({command.observed})" if isinstance(command, ReportVolume) else "")
        + " -> "
        + (
            type(outcome).__name__
            if isinstance(outcome, GpuWorkerError)
            else str([type(d).__name__ for d in outcome])
        )
    )
    check_step(previous, command, outcome, run)
    invariant_holds(run)
    check_replay(run)
    return outcome


def _sizes_seen(run: Run) -> list[int]:
    return sorted(
        {e.data.size_gb for e in run.events if isinstance(e.data, VolumeCreated | VolumeGrown)}
    )


def _at(command: Any, run: Run, data: st.DataObject) -> Any:
    run.at += data.draw(ds.time_steps, label="time step")
    return ds.at_time(command, run.at)


@SETTINGS
@given(data=st.data(), first=st.one_of(valid_create, valid_create, _create(user_actors)))
def test_volume_interleavings_keep_the_invariants(data: st.DataObject, first: Any) -> None:
    run = Run(VOLUME, "0190f1e2-0000-7000-8000-0000000000f1")
    invariant_holds(run)
    step(data, run, _at(first, run, data))
    for _ in range(data.draw(st.integers(0, MAX_STEPS), label="steps")):
        command = resolve(data.draw(commands, label="command"), run)
        step(data, run, _at(command, run, data))


# --- scenarios the random walk must not be trusted to find ----------------------------------------


def _created(size: int = 100) -> Run:
    run = Run(VOLUME, "0190f1e2-0000-7000-8000-0000000000f2")
    create = CreateVolume(
        actor=OWNER,
        at=ds.BASE_TIME,
        name="training-data",
        size_gb=size,
        datacenter_id="US-TX-3",
        host_id="h1",
        price_per_gb_month_micros=70_000,
        rate_card_version="2026-01",
    )
    assert isinstance(run.apply(create), list)
    return run


def _apply(run: Run, command: Any) -> Any:
    run.at += timedelta(seconds=1)
    previous = run.state
    outcome = run.apply(ds.at_time(command, run.at))
    check_step(previous, command, outcome, run)
    invariant_holds(run)
    check_replay(run)
    return outcome


def _report(observed: str, **fields: Any) -> ReportVolume:
    return ReportVolume(actor=AGENT, at=ds.BASE_TIME, observed=observed, **fields)  # type: ignore[arg-type]


def _attach(instance_id: str) -> AttachVolume:
    return AttachVolume(actor=OWNER, at=ds.BASE_TIME, instance_id=instance_id)


def _detach(instance_id: str) -> DetachVolume:
    return DetachVolume(actor=RELEASER, at=ds.BASE_TIME, instance_id=instance_id)


def _delete(actor: str = OWNER) -> DeleteVolume:
    return DeleteVolume(actor=actor, at=ds.BASE_TIME)


def test_delete_is_refused_while_attached_and_names_every_instance() -> None:
    run = _created()
    _apply(run, _report("provisioned"))
    _apply(run, _attach("inst-1"))
    _apply(run, _attach("inst-2"))
    refusal = _apply(run, _delete())
    assert isinstance(refusal, Conflict)
    assert "inst-1" in refusal.message and "inst-2" in refusal.message
    _apply(run, _detach("inst-1"))
    refusal = _apply(run, _delete())
    assert isinstance(refusal, Conflict) and "inst-2" in refusal.message
    assert "inst-1" not in refusal.message
    _apply(run, _detach("inst-2"))
    assert _apply(run, _delete()) == [VolumeDeleteRequested()]
    assert run.state.status == "DELETING"
    # A second delete is an accepted no-op; an attach now is a conflict; then the host confirms.
    assert _apply(run, _delete()) == []
    assert isinstance(_apply(run, _attach("inst-3")), Conflict)
    assert _apply(run, _report("deleted")) == [VolumeDeleted()]
    assert run.state.status == "DELETED"
    # Gone: nobody sees it any more, not even the owner.
    for command in (_attach("inst-3"), _delete(), _report("provisioned")):
        assert isinstance(_apply(run, command), NotFound)


def test_sizes_only_grow_and_the_host_catches_up() -> None:
    run = _created(100)
    _apply(run, _report("provisioned"))
    assert run.state.provisioned_gb == 100
    assert _apply(run, UpdateVolume(actor=OWNER, at=ds.BASE_TIME, size_gb=250)) == [
        VolumeGrown(size_gb=250)
    ]
    refusal = _apply(run, UpdateVolume(actor=OWNER, at=ds.BASE_TIME, size_gb=200))
    assert isinstance(refusal, BadRequest) and "only grow" in refusal.message
    assert isinstance(
        _apply(run, UpdateVolume(actor=OWNER, at=ds.BASE_TIME, size_gb=4001)), BadRequest
    )
    assert run.state.size_gb == 250 and run.state.provisioned_gb == 100
    # A stale report of an older size, and one of more than was asked for, change nothing.
    assert _apply(run, _report("resized", size_gb=100)) == []
    assert _apply(run, _report("resized", size_gb=4000)) == []
    assert _apply(run, _report("resized", size_gb=250)) == [VolumeResized(size_gb=250)]
    assert run.state.provisioned_gb == 250


@pytest.mark.parametrize("size", [MIN_SIZE_GB - 1, MAX_SIZE_GB + 1, 0, -5])
def test_sizes_outside_the_range_are_bad_requests(size: int) -> None:
    run = Run(VOLUME, "0190f1e2-0000-7000-8000-0000000000f3")
    create = CreateVolume(
        actor=OWNER,
        at=ds.BASE_TIME,
        name="n",
        size_gb=size,
        datacenter_id="US-TX-3",
        host_id="h1",
        price_per_gb_month_micros=70_000,
        rate_card_version="2026-01",
    )
    refusal = run.apply(create)
    assert isinstance(refusal, BadRequest) and "size" in refusal.message
    assert run.state is None


def test_another_user_cannot_touch_the_volume() -> None:
    run = _created()
    _apply(run, _report("provisioned"))
    for command in (
        UpdateVolume(actor=OTHER, at=ds.BASE_TIME, name="mine now"),
        UpdateVolume(actor=OTHER, at=ds.BASE_TIME, size_gb=500),
        _delete(OTHER),
        AttachVolume(actor=OTHER, at=ds.BASE_TIME, instance_id="inst-1"),
        ReportVolume(actor=OWNER, at=ds.BASE_TIME, observed="deleted"),
    ):
        refusal = _apply(run, command)
        assert isinstance(refusal, NotFound), refusal
        assert OWNER not in refusal.message
    assert run.state.status == "AVAILABLE" and run.state.attached == ()


def test_a_failed_volume_can_only_be_deleted() -> None:
    run = _created()
    _apply(run, _attach("inst-1"))
    assert _apply(run, _report("failed", reason="disk full")) == [
        VolumeProvisioningFailed(reason="disk full")
    ]
    assert run.state.status == "FAILED" and run.state.failure_reason == "disk full"
    assert _apply(run, _report("provisioned")) == []
    assert isinstance(_apply(run, _attach("inst-2")), Conflict)
    assert isinstance(_apply(run, _delete()), Conflict)
    _apply(run, _detach("inst-1"))
    assert _apply(run, _delete()) == [VolumeDeleteRequested()]
    assert _apply(run, _report("deleted")) == [VolumeDeleted()]
