"""Idempotency-Key on every authenticated POST, for 24 h: the same key and body replay the first
response; the same key with another body is 409; a key whose first request is still running is 409
too.

Keys are scoped by user. A first attempt that ended in 5xx releases its key, so the client's retry
runs again instead of replaying a failure. Stored responses are sealed with the secret box.

Anonymous requests (/auth/signup, /auth/login, /auth/refresh) have no user to scope a key by, and
their responses are tokens: a stored one would be handed to anyone who repeats the key and body
within 24 h. On them the header is accepted and ignored: nothing is stored, nothing is replayed,
every request runs. They are safe to retry without it: a repeated signup is 409 (the email is
taken), a repeated login starts another session, and a repeated refresh is refused as the reuse of
a spent refresh token.

Each claim also deletes up to PURGE_BATCH expired records, oldest first, in the same statement:
records are only written by claims, so they can never pile up faster than they are purged, and no
request pays for more than one batch."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec
import psycopg
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.api.body_limit import MAX_BODY_BYTES, TOO_LARGE
from services.errors import ErrorBody, ErrorResponse, error_type
from services.security.secret_box import SecretBox

log = logging.getLogger("gpuworker.api")

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
TTL = "24 hours"
PURGE_BATCH = 100


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _error(code: int, message: str) -> bytes:
    return msgspec.json.encode(ErrorResponse(ErrorBody(code, error_type(code), message)))


class ClientGone(Exception):
    """The client disconnected before its body was complete: nothing to run, no one to answer."""


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole body, or None as soon as it is known to pass the limit: announced by
    Content-Length, or read so far. Chunks are joined once (repeated `+=` is quadratic)."""
    announced = dict(scope["headers"]).get(b"content-length")
    if announced is not None and announced.strip().isdigit() and int(announced) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw_key = dict(scope["headers"]).get(HEADER)
        # Anonymous: the header means nothing here (see the module's docstring).
        owner: str | None = getattr(scope.get("user"), "id", None)
        if raw_key is None or owner is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            await _send_json(
                send, 400, _error(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
            )
            return
        try:
            body = await _read_body(scope, receive)
        except ClientGone:
            return
        if body is None:
            await _send_json(send, 413, _error(413, TOO_LARGE))
            return
        request_hash = hashlib.sha256(scope["path"].encode() + b"\n" + body).hexdigest()
        ctx = scope["litestar_app"].state.ctx
        pool: AsyncConnectionPool[Any] = ctx.pool
        box: SecretBox = ctx.box
        bound_to = f"idempotency:{owner}:{key}"
        try:
            outcome = await self._claim(pool, owner, key, request_hash)
            if outcome is not None and outcome[0] > 0:
                outcome = (outcome[0], box.open(outcome[1].decode(), bound_to).encode())
        except (psycopg.Error, PoolTimeout):
            await _send_json(
                send, 503, _error(503, "the database (PostgreSQL) is unavailable; retry shortly")
            )
            return
        if outcome is not None:
            status, stored = outcome
            await _send_json(send, abs(status), stored)
            return

        replayed = False

        async def replay_body() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        captured: dict[str, Any] = {"status": 500, "body": b""}

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        finally:
            sealed = box.seal(captured["body"].decode("utf-8", "replace"), bound_to).encode()
            await self._finish(pool, owner, key, captured["status"], sealed)

    @staticmethod
    async def _claim(
        pool: AsyncConnectionPool[Any], owner: str, key: str, request_hash: str
    ) -> tuple[int, bytes] | None:
        """None: this request owns the key now. Otherwise the response to send instead: a stored
        one (sealed, positive status) or a refusal (clear, status negated)."""
        async with pool.connection() as conn, conn.transaction():
            # This key, if it has expired, and one batch of any expired records. SKIP LOCKED:
            # concurrent claims purge different batches instead of queueing on the same rows.
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - %(ttl)s::interval"
                " AND ((scope = %(scope)s AND key = %(key)s) OR (scope, key) IN ("
                "  SELECT scope, key FROM idempotency_keys"
                "  WHERE created_at < now() - %(ttl)s::interval"
                "  ORDER BY created_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED))",
                {"ttl": TTL, "scope": owner, "key": key, "batch": PURGE_BATCH},
            )
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (owner, key, request_hash),
            )
            if await cur.fetchone():
                return None
            cur = await conn.execute(
                "SELECT request_hash, status_code, body FROM idempotency_keys"
                " WHERE scope = %s AND key = %s",
                (owner, key),
            )
            row = await cur.fetchone()
        if row is None:
            return -409, _error(409, "this Idempotency-Key is being released; retry")
        stored_hash, status, stored = row
        if stored_hash != request_hash:
            return -409, _error(
                409,
                "this Idempotency-Key was already used with a different request;"
                " use a new key for a new request",
            )
        if status is None:
            return -409, _error(
                409, "a request with this Idempotency-Key is still in progress; retry shortly"
            )
        return int(status), bytes(stored)

    @staticmethod
    async def _finish(
        pool: AsyncConnectionPool[Any], owner: str, key: str, status: int, body: bytes
    ) -> None:
        try:
            async with pool.connection() as conn:
                if status >= 500:
                    await conn.execute(
                        "DELETE FROM idempotency_keys WHERE scope = %s AND key = %s", (owner, key)
                    )
                else:
                    await conn.execute(
                        "UPDATE idempotency_keys SET status_code = %s, body = %s"
                        " WHERE scope = %s AND key = %s",
                        (status, body, owner, key),
                    )
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("could not record idempotent response: %s", type(exc).__name__)
