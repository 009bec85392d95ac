"""Container logs on the wire: the api asks the agent of the container's host over NATS and the
agent answers from its runtime, so the api never touches a host's Docker socket.

1. The api subscribes to a stream subject of its own making, `logs.out.<host>.<random>`, then
   requests `logs.req.<host>` with a `LogRequest` naming it. Only the api may publish requests and
   read streams; only that host's agent may subscribe to its requests and publish on its streams
   (services/nats_permissions.py), so another host cannot answer, and a stream id is 128 random
   bits.
2. The agent answers the request (`LogAnswer`: accepted, or the error), then sends `LogChunk`s
   on the stream, each as a request the api acknowledges once it has handed the lines on: one
   chunk in flight, so a slow reader slows the agent (and Docker) down instead of filling memory.
   While a follow has nothing to say, the agent sends an empty chunk every IDLE_BEAT_S: a reader
   that has gone (its subscription is gone: "no responders") ends the stream on the agent.
3. The last chunk has `end` set (the container stopped, the tail was sent, or the agent gave up).

Bounded at every step: at most MAX_TAIL lines back, lines cut at MAX_LINE_CHARS, and at most
LINES_PER_S lines and BYTES_PER_S bytes a second per stream."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.subjects import check_host_id
from services.errors import ErrorBody

LOGS_ROOT = "logs"
DEFAULT_TAIL = 100
MAX_TAIL = 10_000
MAX_LINE_CHARS = 16 * 1024
LINES_PER_S = 2_000
BYTES_PER_S = 1024 * 1024
CHUNK_BYTES = 64 * 1024
CHUNK_LINES = 500
# An idle follow's beat, and how long the agent waits for the api to take a chunk.
IDLE_BEAT_S = 10.0
ACK_TIMEOUT_S = 30.0
TRUNCATED = " …[line truncated]"


def log_request_subject(host_id: str) -> str:
    return f"{LOGS_ROOT}.req.{check_host_id(host_id)}"


def log_stream_subject(host_id: str, stream_id: str) -> str:
    if not stream_id.isalnum():
        raise ValueError(f"not a stream id: {stream_id!r}")
    return f"{LOGS_ROOT}.out.{check_host_id(host_id)}.{stream_id}"


def log_streams_of(host_id: str) -> str:
    """Every stream subject of one host (the agent's publish right)."""
    return f"{LOGS_ROOT}.out.{check_host_id(host_id)}.*"


class LogRequest(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    # Where to send the lines: a subject from `log_stream_subject` for this host.
    stream: str
    tail: int = DEFAULT_TAIL
    since: datetime | None = None
    follow: bool = False


class LogAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's answer to a request: None, the lines follow on the stream."""

    error: ErrorBody | None = None


class LogEntry(msgspec.Struct, frozen=True, array_like=True):
    at: datetime | None
    text: str


class LogChunk(msgspec.Struct, frozen=True, kw_only=True):
    lines: list[LogEntry] = []
    end: bool = False
    # Why it ended, when not simply because everything was sent.
    reason: str | None = None


def clipped(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + TRUNCATED
