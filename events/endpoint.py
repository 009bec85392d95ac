"""Facts about serverless endpoints that the ledger bills: a worker's GPU time.

The serverless side (endpoints, the autoscaler, the job queue) emits these on the endpoint's
aggregate; the ledger opens a session at `WorkerStarted` and closes it at `WorkerStopped`, both at
the event's `occurred_at` (the host's clock). Everything the ledger needs is in the events
themselves, so it never depends on the serverless read models."""

import msgspec

from events.catalog import registrar

register = registrar("endpoint")


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
