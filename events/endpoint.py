"""Facts about serverless endpoints: what their owner asked for, and the workers the ledger bills.

An endpoint holds the container its workers run (`ContainerConfig`, resolved from its template with
the endpoint's own env merged in, when it is created or when its template or env change) and a
`config_version` that grows with every such change: a worker started for an older version takes
no new jobs and is replaced (drained) by the autoscaler.

Its workers are part of the endpoint aggregate, not instances of their own: the autoscaler's
decisions (`WorkerPlaced`, `WorkerStopRequested`, each with its reason) are checked against the
endpoint's own state (never more than `workersMax`, nothing for a deleted or suspended endpoint), so
the endpoint's optimistic concurrency keeps those rules however many deciders race, the way the
host aggregate keeps a GPU from being handed out twice. A worker's GPUs are a lease on its host
(`GpusAllocated` with the worker's id), appended in the same atomic batch as `WorkerPlaced`.

`WorkerStarted`/`WorkerStopped` are a worker's GPU time: the ledger opens a session at
`WorkerStarted` and closes it at `WorkerStopped`, both at the event's `occurred_at` (the host's
clock: Docker's StartedAt and FinishedAt of the worker's container). Everything the ledger needs is
in the events themselves, so it never depends on the serverless read models. They are emitted from
what the worker's host reports, never for a worker that does not run (one whose container never
started ends with `WorkerStartFailed`)."""

from typing import Any

import msgspec

from events.catalog import registrar
from events.container import ContainerConfig

register = registrar("endpoint")


class EndpointSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How an endpoint scales and runs its jobs (everything but its name and container)."""

    gpu_ids: list[str]
    gpu_count: int
    workers_min: int
    workers_max: int
    idle_timeout_s: int
    scaler_type: str
    scaler_value: int
    execution_timeout_ms: int
    datacenter_id: str | None = None
    network_volume_id: str | None = None


@register()
class EndpointCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    template_id: str
    # The endpoint's own env (shown back to its owner), and the container its workers run: the
    # template's, with that env merged over the template's.
    env: dict[str, str]
    container: ContainerConfig
    settings: EndpointSettings


@register()
class EndpointUpdated(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only what changed is set. A new `container` (template or env changed) is a new version."""

    name: str | None = None
    template_id: str | None = None
    env: dict[str, str] | None = None
    container: ContainerConfig | None = None
    settings: EndpointSettings | None = None


@register()
class EndpointDeleted(msgspec.Struct, frozen=True):
    """Its queued and running jobs are cancelled and its workers stopped."""


@register()
class WorkerStarted(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    # The endpoint's owner: who pays.
    owner_id: str
    host_id: str
    gpu_type_id: str
    gpu_count: int
    # An always-on worker (one of the endpoint's minimum) at the lower active rate, if the rate card
    # has one; else flex.
    active: bool = False


def upcast_worker_stopped_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 names the GPU lease the stop ends and whether anyone asked for it; v1 did not say."""
    return {**payload, "host_id": None, "lease_id": None, "exit_code": None, "unexpected": False}


@register(version=2, upcasters={1: upcast_worker_stopped_v1_v2})
class WorkerStopped(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    reason: str
    # The GPU lease it held on its host: given back exactly once (services/processes/
    # gpu_releaser.py).
    host_id: str | None = None
    lease_id: str | None = None
    exit_code: int | None = None
    # It ended without being asked to (it exited, crashed or was killed): counts towards the
    # endpoint's unhealthy workers.
    unexpected: bool = False


class WorkerPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """Where a worker runs and what it holds there."""

    host_id: str
    gpu_type_id: str
    gpu_count: int
    gpu_uuids: list[str]
    # The host's GPU lease (GpusAllocated) the worker holds until it stops.
    lease_id: str
    # The container's limits, from the rate card of its GPU type (times gpu_count).
    vcpu_count: int
    memory_in_gb: int


@register()
class WorkerPlaced(msgspec.Struct, frozen=True, kw_only=True):
    """The autoscaler added a worker (`reason` says why); its host starts its container."""

    worker_id: str
    placement: WorkerPlacement
    # The endpoint's config_version it runs: an older one drains and is replaced.
    config_version: int
    # One of the endpoint's always-on workers (workersMin): billed at the active rate.
    active: bool = False
    reason: str


@register()
class WorkerStopRequested(msgspec.Struct, frozen=True, kw_only=True):
    """The autoscaler (idle, drained, deleted, billing) asks the worker's host to stop it."""

    worker_id: str
    reason: str


@register()
class WorkerStartFailed(msgspec.Struct, frozen=True, kw_only=True):
    """Its container could not be made or never started (image, create): nothing was billed."""

    worker_id: str
    reason: str
    host_id: str | None = None
    lease_id: str | None = None


@register()
class EndpointSuspended(msgspec.Struct, frozen=True, kw_only=True):
    """Billing: its owner's balance is used up or budget spent; its workers stop, none start."""

    reason: str


@register()
class EndpointResumed(msgspec.Struct, frozen=True):
    """Billing: its owner can pay again; it scales as its settings say."""
