"""Usage sessions from arbitrary instance and volume histories: a slot's sessions never overlap,
GPU time is exactly the time the container ran on a host that was heard, storage follows its
rates, and a replay makes the same sessions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from events.container import CONTAINER_FIELDS, ContainerChanges
from events.envelope import AggregateRef, Envelope
from events.instance import (
    InstanceCreated,
    InstanceExited,
    InstanceReconfigured,
    InstanceRunning,
    InstanceStopped,
    InstanceTerminated,
)
from events.volume import VolumeCreated, VolumeDeleted, VolumeProvisioned, VolumeResized
from ledger.tracking import host_changed, step
from ledger.usage import Action, Closed, Opened, Price, Usage

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def price_of(usage: Usage, at: datetime) -> Price:
    return Price(unit_price_micros=1000, per_seconds=3600, rate_card_version="test")


def created(**over: Any) -> InstanceCreated:
    """`over` replaces the defaults, the container's fields among them."""
    container: dict[str, Any] = {
        "image_name": "i",
        "container_disk_in_gb": 20,
        "volume_in_gb": 50,
        **{k: over.pop(k) for k in CONTAINER_FIELDS if k in over},
    }
    fields: dict[str, Any] = {
        "name": "box",
        "gpu_type_id": "NVIDIA GeForce RTX 4090",
        "gpu_count": 2,
        "cloud_type": "SECURE",
        "datacenter_id": "US-TX-3",
        "host_id": "h1",
        "gpu_uuids": ["a", "b"],
        "lease_id": "l",
        "template_id": "t",
        "container": container,
        "network_volume_id": None,
        "price_per_hour_micros": 690_000,
        "rate_card_version": "v",
        "vcpu_count": 32,
        "memory_in_gb": 124,
        **over,
    }
    return msgspec.convert(fields, InstanceCreated)


def envelope(n: int, at: datetime, data: msgspec.Struct, kind: str = "instance") -> Envelope:
    return Envelope(
        id=f"e{n}",
        type=type(data).__name__,
        version=1,
        aggregate=AggregateRef(kind, "r1"),
        occurred_at=at,
        recorded_at=at,
        actor="u1",
        correlation_id="c",
        data=data,
    )


STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["running", "stopped", "exited", "grow", "host_lost", "host_back", "terminated"]
        ),
        st.integers(min_value=0, max_value=10_000),  # milliseconds after the previous step
    ),
    max_size=30,
)


def run(steps: list[tuple[str, int]]) -> tuple[list[Action], dict[str, float]]:
    """The actions, and (independently) how long each meter should have been billed."""
    tracked, actions = step(None, envelope(0, T0, created()), price_of)
    assert tracked is not None
    at = T0
    running = lost = ended = False
    expected = {"instance.gpu": 0.0, "container": 0.0}
    for n, (kind, gap_ms) in enumerate(steps, 1):
        nxt = at + timedelta(milliseconds=gap_ms)
        if running and not ended:
            expected["container"] += (nxt - at).total_seconds()
            if not lost:
                expected["instance.gpu"] += (nxt - at).total_seconds()
        at = nxt
        if ended:
            break
        if kind in ("host_lost", "host_back"):
            tracked, more = host_changed(tracked, kind == "host_lost", at, f"h{n}", price_of)
            lost = kind == "host_lost"
        else:
            data: msgspec.Struct = {
                "running": InstanceRunning(),
                "stopped": InstanceStopped(lease_id="l"),
                "exited": InstanceExited(exit_code=1, reason="x", lease_id="l"),
                "grow": InstanceReconfigured(container=ContainerChanges(container_disk_in_gb=40)),
                "terminated": InstanceTerminated(lease_id="l"),
            }[kind]
            result, more = step(tracked, envelope(n, at, data), price_of)
            assert result is not None
            tracked = result
            if kind == "running":
                running, lost = True, False
            elif kind in ("stopped", "exited", "terminated"):
                running = False
                ended = ended or kind == "terminated"
        actions += more
    if not ended:  # close everything at the end, as a termination would
        result, more = step(tracked, envelope(999, at, InstanceTerminated(lease_id="l")), price_of)
        actions += more
    return actions, expected


def intervals(actions: list[Action]) -> dict[str, list[tuple[datetime, datetime]]]:
    opened: dict[str, Opened] = {}
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for action in actions:
        if isinstance(action, Opened):
            assert action.session.id not in opened, "a session opens once"
            opened[action.session.id] = action
        else:
            assert isinstance(action, Closed)
            start = opened.pop(action.session.id).session.started_at
            assert action.ended_at >= start
            out.setdefault(action.session.slot, []).append((start, action.ended_at))
    assert not opened, "every session is closed by the termination"
    return out


@given(STEPS)
def test_sessions_of_a_slot_never_overlap_and_gpu_time_is_exact(
    steps: list[tuple[str, int]],
) -> None:
    actions, expected = run(steps)
    spans = intervals(actions)
    for slot, periods in spans.items():
        for (_a, end), (start, _b) in itertools.pairwise(periods):
            assert end <= start, f"{slot}: sessions overlap"
    gpu = sum((b - a).total_seconds() for a, b in spans.get("instance.gpu", []))
    disk = sum((b - a).total_seconds() for a, b in spans.get("instance.container_disk", []))
    assert abs(gpu - expected["instance.gpu"]) < 1e-6
    assert abs(disk - expected["container"]) < 1e-6


@given(STEPS)
def test_a_replay_opens_the_same_sessions(steps: list[tuple[str, int]]) -> None:
    first, _ = run(steps)
    second, _ = run(steps)
    assert first == second


@given(STEPS)
def test_volume_disk_runs_from_creation_to_termination_at_the_right_rate(
    steps: list[tuple[str, int]],
) -> None:
    actions, _ = run(steps)
    disk = [
        a.session
        for a in actions
        if isinstance(a, Opened) and a.session.meter == "instance.volume_disk"
    ]
    assert disk and disk[0].started_at == T0 and disk[0].tier == "stopped"
    tiers = [s.tier for s in disk]
    assert all(a != b for a, b in itertools.pairwise(tiers)), "a new session only on a change"


def test_a_network_volume_is_billed_per_tier_from_available_to_deleted() -> None:
    t = T0
    tracked, actions = step(
        None,
        envelope(
            1,
            t,
            VolumeCreated(
                name="v",
                size_gb=1500,
                datacenter_id="d",
                host_id="h",
                price_per_gb_month_micros=1,
                rate_card_version="v",
            ),
            "volume",
        ),
        price_of,
    )
    assert actions == []  # CREATING costs nothing
    tracked, opened = step(
        tracked, envelope(2, t + timedelta(seconds=5), VolumeProvisioned(), "volume"), price_of
    )
    assert sorted(
        (a.session.tier, a.session.quantity) for a in opened if isinstance(a, Opened)
    ) == [
        ("above_tb", 500),
        ("first_tb", 1000),
    ]
    tracked, resized = step(
        tracked,
        envelope(3, t + timedelta(seconds=9), VolumeResized(size_gb=2000), "volume"),
        price_of,
    )
    # The first TB is unchanged: only the part above it closes and reopens.
    assert [(type(a).__name__, a.session.tier) for a in resized] == [
        ("Closed", "above_tb"),
        ("Opened", "above_tb"),
    ]
    tracked, deleted = step(
        tracked, envelope(4, t + timedelta(seconds=20), VolumeDeleted(), "volume"), price_of
    )
    assert {type(a).__name__ for a in deleted} == {"Closed"} and len(deleted) == 2
    assert tracked is not None and tracked.open == {}
