"""Facts about serverless jobs: one aggregate per job, from its submission to its final status.

No payload is ever in these events: a job's input and its result (what its worker sent back) are
kept in the payload store (PostgreSQL `job_payloads`, keyed by job id and SHA-256) and the events
carry a `PayloadRef` (the hash and the size). Events are kept forever and NATS carries at most
1 MB a message by default, while an input may be 20 MB, may hold a customer's secrets, and must be
gone when its retention ends (`retention_s` after the job is final).

A job is taken by one worker at a time under an attempt number; only the worker holding the
current attempt can finish it, so a result that arrives late from a worker that lost the job is
refused and never replaces the one accepted."""

import msgspec

from events.catalog import registrar

register = registrar("job")


class PayloadRef(msgspec.Struct, frozen=True):
    """Where a payload is: its SHA-256 (hex) in the job's payloads, and its size in bytes."""

    sha256: str
    size: int


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a customer asked of a job with its `run` or `runsync`."""

    endpoint_id: str
    input: PayloadRef
    webhook: str | None = None
    execution_timeout_ms: int
    # How long it may wait in the queue before it is TIMED_OUT untaken.
    ttl_ms: int
    # Taken only when no normal job of its endpoint waits; never scales workers up.
    low_priority: bool = False
    # How long its status and result are kept once it is final (runsync's are shorter).
    retention_s: int
    sync: bool = False


@register()
class JobSubmitted(JobSpec, frozen=True, kw_only=True):
    """A customer's `run` or `runsync`. The actor owns the job."""


@register()
class JobTaken(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    attempt: int


@register()
class JobCompleted(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    attempt: int
    result: PayloadRef


@register()
class JobFailed(msgspec.Struct, frozen=True, kw_only=True):
    """Its worker reported an error (`result` holds it), or the platform gave up (`reason`)."""

    worker_id: str | None
    attempt: int
    result: PayloadRef | None = None
    reason: str | None = None


@register()
class JobRequeued(msgspec.Struct, frozen=True, kw_only=True):
    """Its worker was lost (silent, or no longer running it): back to the head of the queue."""

    worker_id: str
    attempt: int
    reason: str


@register()
class JobCancelled(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    # The worker that was running it: it is told to drop it.
    worker_id: str | None = None


@register()
class JobTimedOut(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    # The worker that was running it past its executionTimeout: it is told to drop it.
    worker_id: str | None = None


@register()
class JobRetried(msgspec.Struct, frozen=True):
    """A FAILED or TIMED_OUT job goes back to the queue."""
