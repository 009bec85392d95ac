"""A serverless worker built on the real runpod SDK, as a customer's image would run it: started
by the tests as a subprocess with the environment services/worker_env.py builds.

Its handler does what the job's input asks: echo it (default), sleep `seconds` (writing `marker`
when the platform makes it stop: the SDK cancels the handler's task on a job-stop), or fail.
With GPUWORKER_TEST_HANDLER=stream it is a generator handler yielding `count` parts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import runpod

WORKER = os.environ.get("RUNPOD_POD_ID", "?")


async def handler(job: dict[str, Any]) -> Any:
    request = job["input"]
    mode = request.get("mode", "echo") if isinstance(request, dict) else "echo"
    if mode == "sleep":
        try:
            await asyncio.sleep(float(request["seconds"]))
        except asyncio.CancelledError:
            if marker := request.get("marker"):
                Path(marker).write_text(f"{job['id']} stopped on {WORKER}")  # noqa: ASYNC240
            raise
        return {"slept": request["seconds"], "worker": WORKER}
    if mode == "fail":
        raise RuntimeError(request.get("message", "the handler failed"))
    return {"echo": request, "worker": WORKER}


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    for part in range(int(job["input"].get("count", 3))):
        yield {"part": part, "worker": WORKER}


if __name__ == "__main__":
    if os.environ.get("GPUWORKER_TEST_HANDLER") == "stream":
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler})
