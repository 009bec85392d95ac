"""A simulated serverless worker: what runs in a simulated runtime's "container" whose env is a
worker's (RUNPOD_WEBHOOK_GET_JOB, …). An in-process client of the worker protocol that speaks it
over HTTP as the runpod SDK does (the same URLs, token and query parameters: job-take long polls,
job-done with the result as JSON, a ping with the jobs it runs every RUNPOD_PING_INTERVAL ms),
and "completes" each job by answering its input as its output. So development stacks, scale tests
and benchmarks run the whole path a real worker takes, without containers.

Knobs, from the container's env (a template's or an endpoint's own):
- SIMULATED_WORKER_CONCURRENCY: jobs it runs at once (takers), default 1;
- SIMULATED_JOB_MS: how long each job takes, default 0; a job whose input is an object with a
  number `sleep` takes that many seconds (as the example busybox worker does);
- SIMULATED_EXIT_CODE: the container exits with this code as soon as it has started (a
  crash-looping template)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import httpx
import msgspec

log = logging.getLogger("gpuworker.agent.simulated-worker")

TAKE_ENV = "RUNPOD_WEBHOOK_GET_JOB"
EXIT_CODE_ENV = "SIMULATED_EXIT_CODE"
# A call that failed (the api restarting, …) is tried again after this pause.
RETRY_PAUSE_S = 0.5
DONE_ATTEMPTS = 3


class _Job(msgspec.Struct):
    id: str
    input: msgspec.Raw


class _Sleepy(msgspec.Struct):
    sleep: float = 0.0


def is_worker(env: Mapping[str, str]) -> bool:
    return TAKE_ENV in env


def exit_code(env: Mapping[str, str]) -> int | None:
    value = env.get(EXIT_CODE_ENV, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def _seconds(raw: bytes, default_s: float) -> float:
    try:
        return max(0.0, msgspec.json.decode(raw, type=_Sleepy).sleep) or default_s
    except (msgspec.ValidationError, msgspec.DecodeError):
        return default_s


def _connection() -> httpx.AsyncClient:
    """One kept-alive connection to the api, for one taker (or the pinger): a pool shared by many
    checks each of its connections on every request (httpx looks for dropped ones), which took
    most of the agent's CPU with 64 takers in one pool."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, read=120.0),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,
    )


class SimulatedWorker:
    def __init__(self, env: Mapping[str, str]) -> None:
        worker_id = env["RUNPOD_POD_ID"]
        self._take = env[TAKE_ENV].replace("$ID", worker_id) + "&job_in_progress=0"
        self._done = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", worker_id)
        self._ping = env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", worker_id)
        self._headers = {"authorization": env["RUNPOD_AI_API_KEY"]}
        self._ping_s = max(0.1, int(env.get("RUNPOD_PING_INTERVAL", "10000")) / 1000)
        self._takers = max(1, int(env.get("SIMULATED_WORKER_CONCURRENCY", "1") or 1))
        self._job_s = max(0, int(env.get("SIMULATED_JOB_MS", "0") or 0)) / 1000
        self._running: set[str] = set()
        self.completed = 0

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._taker()) for _ in range(self._takers)]
        tasks.append(asyncio.create_task(self._pinger()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pinger(self) -> None:
        async with _connection() as client:
            while True:
                url = f"{self._ping}&job_id={','.join(sorted(self._running))}"
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(url, headers=self._headers)
                await asyncio.sleep(self._ping_s)

    async def _taker(self) -> None:
        async with _connection() as client:
            await self._take_forever(client)

    async def _take_forever(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                response = await client.get(self._take, headers=self._headers)
            except httpx.HTTPError:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if response.status_code == 204:
                continue
            if response.status_code != 200:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            job = msgspec.json.decode(response.content, type=_Job)
            self._running.add(job.id)
            try:
                await self._run_job(client, job)
            finally:
                self._running.discard(job.id)

    async def _run_job(self, client: httpx.AsyncClient, job: _Job) -> None:
        took = _seconds(bytes(job.input), self._job_s)
        if took:
            await asyncio.sleep(took)
        body = b'{"output":' + bytes(job.input) + b"}"
        url = self._done.replace("$ID", job.id) + "&isStream=false"
        for _ in range(DONE_ATTEMPTS):
            try:
                response = await client.post(
                    url, content=body, headers={**self._headers, "content-type": "application/json"}
                )
            except httpx.HTTPError:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if response.status_code < 500:
                self.completed += response.status_code == 200
                return
            await asyncio.sleep(RETRY_PAUSE_S)
        log.warning("simulated worker: the result of job %s was not accepted", job.id)
