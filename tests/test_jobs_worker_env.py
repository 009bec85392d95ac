"""The worker's environment and token, and who may give a job's commands: pure checks.

The URLs must work with what the runpod SDK does to them (services/worker_env.py quotes it):
`$ID` and `$RUNPOD_POD_ID` replaced, `&job_in_progress=`/`&isStream=` appended to a URL that
already has a query, `/job-take/` swapped for `/job-take-batch/` and `/job-stop/`."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from events.subjects import CommandChannel
from services.deciders.entitlements import CommandHead, check_entitled
from services.errors import Forbidden
from services.security.secret_box import generate_key
from services.security.worker_tokens import WorkerTokens
from services.worker_env import reserved, worker_env


def test_urls_take_what_the_sdk_appends_and_replaces() -> None:
    tokens = WorkerTokens(generate_key())
    env = worker_env("http://127.0.0.1:8080/", "ep-1", "w-1", 3, tokens, 2)
    take = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w-1") + "&job_in_progress=0"
    parts = urlsplit(take)
    assert parts.path == "/worker/v1/ep-1/job-take/w-1"
    assert parse_qs(parts.query) == {"v": ["3"], "job_in_progress": ["0"]}
    batch = take.replace("/job-take/", "/job-take-batch/") + "&batch_size=4"
    assert urlsplit(batch).path == "/worker/v1/ep-1/job-take-batch/w-1"
    stop = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w-1").replace("/job-take/", "/job-stop/")
    assert urlsplit(stop).path == "/worker/v1/ep-1/job-stop/w-1"
    done = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", "w-1")
    done = done.replace("$ID", "job-9") + "&isStream=false"
    assert urlsplit(done).path == "/worker/v1/ep-1/job-done/w-1/job-9"
    assert parse_qs(urlsplit(done).query) == {"v": ["3"], "isStream": ["false"]}
    ping = env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", "w-1")
    assert urlsplit(ping).path == "/worker/v1/ep-1/ping/w-1"
    assert env["RUNPOD_PING_INTERVAL"] == "2000"
    assert env["RUNPOD_POD_ID"] == env["GPUWORKER_POD_ID"] == "w-1"
    assert env["RUNPOD_ENDPOINT_ID"] == "ep-1"
    assert env["GPUWORKER_ENDPOINT_VERSION"] == "3"


def test_tokens_name_one_worker_of_one_endpoint() -> None:
    key = generate_key()
    tokens = WorkerTokens(key)
    token = tokens.mint("ep-1", "w-1")
    assert token.startswith("gpwk_")
    assert tokens.valid(token, "ep-1", "w-1")
    assert not tokens.valid(token, "ep-1", "w-2")
    assert not tokens.valid(token, "ep-2", "w-1")
    assert not WorkerTokens(generate_key()).valid(token, "ep-1", "w-1")
    # Ids cannot be shifted across the separator to forge another pair.
    assert tokens.mint("ep-1", "w-1") != tokens.mint("ep-1w", "-1")
    with pytest.raises(ValueError, match="not a valid aggregate id"):
        worker_env("http://127.0.0.1:1", "ep-1", "../w", 1, tokens, 1)


def test_the_worker_protocol_env_is_reserved() -> None:
    assert reserved("RUNPOD_AI_API_KEY") and reserved("RUNPOD_WEBHOOK_PING")
    assert reserved("GPUWORKER_ENDPOINT_VERSION") and reserved("RUNPOD_POD_ID")
    assert not reserved("RUNPOD_DEBUG_LEVEL") and not reserved("MODEL")


@pytest.mark.parametrize("command", ["TakeJob", "FinishJob", "RequeueJob", "TimeOutJob"])
def test_the_api_may_not_give_the_dispatchers_job_commands(command: str) -> None:
    user = "0190f1e2-0000-7000-8000-00000000000a"
    with pytest.raises(Forbidden):
        check_entitled(CommandChannel("api", "job"), "job-1", CommandHead(command, user))
    for allowed in ("SubmitJob", "CancelJob", "RetryJob"):
        check_entitled(CommandChannel("api", "job"), "job-1", CommandHead(allowed, user))
    check_entitled(CommandChannel("api", "job_queue"), "ep-1", CommandHead("PurgeQueue", user))
