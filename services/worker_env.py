"""The environment a serverless worker runs with: RunPod's names, so an image built on
`runpod.serverless.start(handler)` works unchanged, and the same values under GPUWORKER_* names.

The URLs follow what the runpod SDK does with them (runpod/serverless/modules/rp_job.py,
rp_http.py, rp_ping.py, worker_state.py, version 1.12):

- RUNPOD_WEBHOOK_GET_JOB: `$ID` becomes the worker id (RUNPOD_POD_ID); the SDK appends
  `&job_in_progress=0|1`, so the URL already has a query; it derives the batch take by replacing
  `/job-take/` with `/job-take-batch/` (and appends `&batch_size=N`) and its job-stop long poll by
  replacing `/job-take/` with `/job-stop/`.
- RUNPOD_WEBHOOK_POST_OUTPUT / _POST_STREAM: `$RUNPOD_POD_ID` becomes the worker id and `$ID` the
  job id; the SDK appends `&isStream=true|false`.
- RUNPOD_WEBHOOK_PING: `$RUNPOD_POD_ID` becomes the worker id; the SDK adds `job_id` (the ids it
  runs, comma-separated) and `runpod_version` as query parameters every RUNPOD_PING_INTERVAL ms.
- RUNPOD_AI_API_KEY is sent raw in `Authorization` on every call: the worker's own token, good for
  its endpoint and worker id only (services/security/worker_tokens.py).

Every URL carries `v=<endpoint version>`: the dispatcher gives no new job to a worker of an older
version. `base_url` is the api as the worker reaches it (from inside a container on the same
machine, the host's address on the container network, not 127.0.0.1)."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from events.subjects import check_token

WORKER_ROUTES = "/worker/v1"
# Each route of the worker protocol -> the method the runpod SDK uses on it.
ROUTE_METHODS = {
    "job-take": "GET",
    "job-take-batch": "GET",
    "job-stop": "GET",
    "ping": "GET",
    "job-done": "POST",
    "job-stream": "POST",
}
# The env a customer may not set on an endpoint: the worker protocol's own.
RESERVED_PREFIXES = ("RUNPOD_WEBHOOK_", "GPUWORKER_")
RESERVED_NAMES = frozenset(
    {"RUNPOD_AI_API_KEY", "RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID", "RUNPOD_PING_INTERVAL"}
)


class TokenMinter(Protocol):
    """services/security/worker_tokens.py's WorkerTokens, or a token handed over ready-made."""

    def mint(self, endpoint_id: str, worker_id: str) -> str: ...


class GivenToken:
    """A token minted elsewhere (an agent gets its workers' tokens sealed, from the deciders)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def mint(self, endpoint_id: str, worker_id: str) -> str:
        return self._token


def reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def worker_env(
    base_url: str,
    endpoint_id: str,
    worker_id: str,
    version: int,
    tokens: TokenMinter,
    ping_interval_s: int,
) -> dict[str, str]:
    check_token(endpoint_id)
    check_token(worker_id)
    root = f"{base_url.rstrip('/')}{WORKER_ROUTES}/{quote(endpoint_id, safe='')}"
    query = f"?v={version}"
    urls = {
        "WEBHOOK_GET_JOB": f"{root}/job-take/$ID{query}",
        "WEBHOOK_POST_OUTPUT": f"{root}/job-done/$RUNPOD_POD_ID/$ID{query}",
        "WEBHOOK_POST_STREAM": f"{root}/job-stream/$RUNPOD_POD_ID/$ID{query}",
        "WEBHOOK_PING": f"{root}/ping/$RUNPOD_POD_ID{query}",
    }
    values = {
        **urls,
        "AI_API_KEY": tokens.mint(endpoint_id, worker_id),
        "POD_ID": worker_id,
        "ENDPOINT_ID": endpoint_id,
        "PING_INTERVAL": str(ping_interval_s * 1000),
    }
    env = {f"RUNPOD_{name}": value for name, value in values.items()}
    env.update({f"GPUWORKER_{name}": value for name, value in values.items()})
    env["GPUWORKER_ENDPOINT_VERSION"] = str(version)
    return env
