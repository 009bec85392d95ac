"""A serverless worker on the runpod SDK, as on RunPod: `python handler.py` with the environment
the platform gives every worker (RUNPOD_WEBHOOK_GET_JOB, RUNPOD_WEBHOOK_POST_OUTPUT,
RUNPOD_WEBHOOK_PING, RUNPOD_AI_API_KEY, RUNPOD_POD_ID, …; `gpuworker endpoints worker-env` prints
it). Nothing in it knows about GPUWorker: a worker image built for RunPod runs unchanged."""

import runpod


def handler(job):
    prompt = job["input"].get("prompt", "")
    return {"text": prompt[::-1], "length": len(prompt)}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
