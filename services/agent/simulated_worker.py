"""A simulated serverless worker: what runs in a simulated runtime's "container" whose env is a
worker's (RUNPOD_WEBHOOK_GET_JOB, …). An in-process client of the worker protocol that speaks it
over HTTP as the runpod SDK does (the same URLs, token and query parameters: job-take long polls,
job-done with the result as JSON, a ping with the jobs it runs every RUNPOD_PING_INTERVAL ms),
and "completes" each job by answering its input as its output. So development stacks, scale tests
and benchmarks run the whole path a real worker takes, without containers.

Knobs, from the container's env (a template's or an endpoint's own):
- SIMULATED_WORKER_CONCURRENCY: jobs it runs at once, default 1. Like the SDK's JobScaler, one
  fetcher asks for as many jobs as it has free slots (job-take-batch when that is more than one)
  and waits for a slot when all are busy;
- SIMULATED_JOB_MS: how long each job takes, default 0; a job whose input is an object with a
  number `sleep` takes that many seconds (as the example busybox worker does);
- SIMULATED_EXIT_CODE: the container exits with this code as soon as it has started (a
  crash-looping template)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import msgspec

from services.upstream_http import HttpTarget, UpstreamError, UpstreamPool

log = logging.getLogger("gpuworker.agent.simulated-worker")

TAKE_ENV = "RUNPOD_WEBHOOK_GET_JOB"
EXIT_CODE_ENV = "SIMULATED_EXIT_CODE"
# A call that failed (the api restarting, …) is tried again after this pause.
RETRY_PAUSE_S = 0.5
CONNECT_TIMEOUT_S = 10.0
# Longer than any long poll the api holds a take for.
READ_TIMEOUT_S = 120.0
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


class SimulatedWorker:
    def __init__(self, env: Mapping[str, str]) -> None:
        worker_id = env["RUNPOD_POD_ID"]
        take_url = env[TAKE_ENV].replace("$ID", worker_id)
        self._take = HttpTarget.of(take_url + "&job_in_progress=0")
        self._take_batch = HttpTarget.of(
            take_url.replace("/job-take/", "/job-take-batch/") + "&job_in_progress=1"
        )
        # Its target still holds `$ID`, which each job's id replaces.
        self._done = HttpTarget.of(
            env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", worker_id)
            + "&isStream=false"
        )
        self._ping = HttpTarget.of(env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", worker_id))
        self._headers = [
            self._take.host_header,
            (b"authorization", env["RUNPOD_AI_API_KEY"].encode()),
        ]
        self._ping_s = max(0.1, int(env.get("RUNPOD_PING_INTERVAL", "10000")) / 1000)
        self._takers = max(1, int(env.get("SIMULATED_WORKER_CONCURRENCY", "1") or 1))
        self._job_s = max(0, int(env.get("SIMULATED_JOB_MS", "0") or 0)) / 1000
        self._running: set[str] = set()
        self._jobs: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        # The lean client (services/upstream_http.py): with httpx, a worker's calls took most of
        # a simulated host's CPU, which benchmarks and scale tests then measured as the stack's.
        self._api = UpstreamPool(CONNECT_TIMEOUT_S, READ_TIMEOUT_S, keep_per_target=1024)
        self.completed = 0

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._fetcher()), asyncio.create_task(self._pinger())]
        try:
            await asyncio.gather(*tasks)
        finally:
            tasks.extend(self._jobs)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._api.close()

    async def _call(
        self, method: str, to: HttpTarget, body: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = self._headers
        if body is not None:
            headers = [*headers, (b"content-type", b"application/json")]
        return await self._api.call(method, to, headers, body)

    async def _pinger(self) -> None:
        while True:
            running = ",".join(sorted(self._running))
            ping = self._ping._replace(target=f"{self._ping.target}&job_id={running}")
            with contextlib.suppress(UpstreamError):
                await self._call("GET", ping)
            await asyncio.sleep(self._ping_s)

    def _take_target(self, wanted: int) -> HttpTarget:
        if wanted == 1:
            return self._take
        batch = self._take_batch
        return batch._replace(target=f"{batch.target}&batch_size={wanted}")

    async def _fetcher(self) -> None:
        while True:
            wanted = self._takers - len(self._running)
            if wanted <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                status, content = await self._call("GET", self._take_target(wanted))
            except UpstreamError:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if status == 204:
                continue
            if status != 200:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            taken = msgspec.json.decode(content, type=_Job | list[_Job])
            for job in taken if isinstance(taken, list) else [taken]:
                self._running.add(job.id)
                task = asyncio.create_task(self._run_then_free(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)

    async def _run_then_free(self, job: _Job) -> None:
        try:
            await self._run_job(job)
        finally:
            self._running.discard(job.id)
            self._slot_freed.set()

    async def _run_job(self, job: _Job) -> None:
        took = _seconds(bytes(job.input), self._job_s)
        if took:
            await asyncio.sleep(took)
        body = b'{"output":' + bytes(job.input) + b"}"
        done = self._done._replace(target=self._done.target.replace("$ID", job.id))
        for _ in range(DONE_ATTEMPTS):
            try:
                status, _ = await self._call("POST", done, body)
            except UpstreamError:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if status < 500:
                self.completed += status == 200
                return
            await asyncio.sleep(RETRY_PAUSE_S)
        log.warning("simulated worker: the result of job %s was not accepted", job.id)
