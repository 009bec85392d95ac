"""The wire between the api's worker protocol (services/api/worker_protocol.py) and the job
dispatcher in the deciders role (services/processes/job_dispatcher.py): NATS subjects
`wk.<endpoint>.<operation>` and msgspec JSON.

Worker traffic is kept off `cmd.>`: a take or a job-stop is a long poll that may wait many
seconds, and the deciders' command server bounds how many commands it runs at once; long polls
there would starve every other command. The api has verified the worker's token for the endpoint
the subject names before it sends anything here, and only the api may publish on `wk.>`.

- take, stop, done, hold: requests to one dispatcher (queue group `dispatch`);
- ping: published to every dispatcher (no queue group), so each knows every worker is alive."""

from __future__ import annotations

import msgspec

from events.job import PayloadRef
from events.subjects import check_token, id_of_token
from services.errors import ErrorBody

WORKER_ROOT = "wk"
DISPATCH_QUEUE = "dispatch"
TAKE = "take"
STOP = "stop"
DONE = "done"
HOLD = "hold"
PING = "ping"
MAX_BATCH = 64


def worker_subject(endpoint_id: str, operation: str) -> str:
    return f"{WORKER_ROOT}.{check_token(endpoint_id)}.{operation}"


def all_workers(operation: str) -> str:
    return f"{WORKER_ROOT}.*.{operation}"


def endpoint_of(subject: str) -> str:
    """The endpoint id a `wk.<endpoint>.<operation>` subject names ("~" back to ".")."""
    return id_of_token(subject.split(".")[1])


class TakeRequest(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    batch: int = 1
    # The endpoint version the worker was started for (None: not said, taken as current).
    version: int | None = None
    wait_ms: int


class Offer(msgspec.Struct, frozen=True):
    id: str
    input: PayloadRef


class TakeReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    jobs: list[Offer] = []
    error: ErrorBody | None = None


class DoneRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's result (its done call), already in the payload store."""

    worker_id: str
    job_id: str
    result: PayloadRef
    failed: bool = False


class HoldRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The job as the dispatcher knows it, asked before a worker's result or partial output is
    stored: what the job would refuse is never written to the payload store."""

    job_id: str


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    # The jobs the worker says it is running.
    job_ids: list[str] = []
    version: int | None = None
    # Set when the worker reports itself unhealthy (the SDK's failed fitness check).
    unhealthy: str | None = None


class StopRequest(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    wait_ms: int


class StopReply(msgspec.Struct, frozen=True):
    job_ids: list[str]
