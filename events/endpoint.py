"""Facts about serverless endpoints: what their owner asked for, and the workers the ledger bills.

An endpoint holds the container its workers run (`ContainerConfig`, resolved from its template with
the endpoint's own env merged in, when it is created or when its template or env change) and a
`config_version` that grows with every such change: a worker started for an older version takes
no new jobs and is replaced (drained) by the autoscaler.

`WorkerStarted`/`WorkerStopped` are a worker's GPU time: the ledger opens a session at
`WorkerStarted` and closes it at `WorkerStopped`, both at the event's `occurred_at` (the host's
clock). Everything the ledger needs is in the events themselves, so it never depends on the
serverless read models. They are emitted by whatever really starts a worker on a host (the agent),
never for a worker that does not run."""

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


@register()
class WorkerStopped(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    reason: str
