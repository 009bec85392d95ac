"""Idempotency-Key on every authenticated POST, for 24 h, end to end: the same key and body give
the same outcome and never a second resource, whatever happened to the first attempt.

- The first request with a key records a seed for it; the request's resource and command ids are
  derived from that seed (`services/api/request_ids.py`), so its events' ids are fixed too, and the
  deciders answer a command they have already taken with the state it made.
- A request holds its key under a lease (renewed while it runs). Another request with the key
  meanwhile gets 409 "in progress" with Retry-After. A request that died (its api process killed)
  never leaves the key stuck: the lease lapses and the next retry takes the key over, with the
  same seed, and completes what the first began.
- The response is recorded before it is sent. A 2xx or 4xx is replayed to every later retry; a
  5xx (a dependency down, "may or may not have been applied") releases the lease but keeps the
  seed, so the retry runs again with the same ids and settles the outcome.
- The same key with another body is 409.

Stored responses are sealed with the secret box.

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

import asyncio
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from events.ids import new_id
from services.api.asgi_io import ClientGone, error_body, read_body, send_json
from services.api.body_limit import limit_for, too_large
from services.api.errors import DATABASE_DOWN
from services.api.request_ids import RETRY, SEED
from services.security.secret_box import SecretBox

log = logging.getLogger("gpuworker.api")

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
TTL = "24 hours"
PURGE_BATCH = 100
# How long a request holds its key without renewing it: past the longest request (command 5 s,
# read-your-writes 5 s) with room to spare; renewed every third of it while the request runs.
LEASE_S = 15.0


@dataclass(frozen=True)
class Claimed:
    """This request holds the key now: its ids come from `seed`; `retry` if an earlier attempt
    held it first (and may have been applied). `token` names this attempt's lease."""

    seed: str
    retry: bool
    token: str


@dataclass(frozen=True)
class Answer:
    """Send this instead of running the request."""

    status: int
    body: bytes
    retry_after_s: int | None = None
    # A stored response is sealed; a refusal made now is not.
    sealed: bool = False


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
            await send_json(
                send,
                400,
                error_body(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters"),
            )
            return
        try:
            body = await read_body(scope, receive)
        except ClientGone:
            return
        if body is None:
            await send_json(send, 413, error_body(413, too_large(limit_for(scope["path"]))))
            return
        request_hash = hashlib.sha256(scope["path"].encode() + b"\n" + body).hexdigest()
        ctx = scope["litestar_app"].state.ctx
        pool: AsyncConnectionPool[Any] = ctx.pool
        box: SecretBox = ctx.box
        bound_to = f"idempotency:{owner}:{key}"
        try:
            claim = await self._claim(pool, owner, key, request_hash)
        except (psycopg.Error, PoolTimeout):
            await send_json(
                send,
                503,
                error_body(503, DATABASE_DOWN),
            )
            return
        if isinstance(claim, Answer):
            stored = (
                box.open(claim.body.decode(), bound_to).encode() if claim.sealed else claim.body
            )
            extra = (
                [(b"retry-after", str(claim.retry_after_s).encode())]
                if claim.retry_after_s is not None
                else None
            )
            await send_json(send, claim.status, stored, extra)
            return
        state = scope.setdefault("state", {})
        state[SEED] = claim.seed
        state[RETRY] = claim.retry

        replayed = False

        async def replay_body() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: Any = {"type": "http.response.start", "status": 500, "headers": []}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            # Held back: the response is recorded before the client sees it.
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        renewing = asyncio.create_task(self._renew(pool, owner, key, claim.token))
        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            await self._release(pool, owner, key, claim.token)
            raise
        finally:
            renewing.cancel()
        response = b"".join(chunks)
        status = int(start["status"])
        if status >= 500:
            await self._release(pool, owner, key, claim.token)
        else:
            sealed = box.seal(response.decode("utf-8", "replace"), bound_to).encode()
            await self._record(pool, owner, key, status, sealed)
        await send(start)
        await send({"type": "http.response.body", "body": response, "more_body": False})

    @staticmethod
    async def _claim(
        pool: AsyncConnectionPool[Any], owner: str, key: str, request_hash: str
    ) -> Claimed | Answer:
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
            token = new_id()
            cur = await conn.execute(
                "INSERT INTO idempotency_keys"
                " (scope, key, request_hash, seed, lease_until, lease_token)"
                " VALUES (%s, %s, %s, %s, now() + %s * interval '1 second', %s)"
                " ON CONFLICT DO NOTHING RETURNING seed",
                (owner, key, request_hash, new_id(), LEASE_S, token),
            )
            row = await cur.fetchone()
            if row is not None:
                return Claimed(seed=row[0], retry=False, token=token)
            cur = await conn.execute(
                "SELECT request_hash, status_code, body, seed,"
                " extract(epoch FROM lease_until - now()) FROM idempotency_keys"
                " WHERE scope = %s AND key = %s FOR UPDATE",
                (owner, key),
            )
            found = await cur.fetchone()
            if found is None:
                return Answer(409, error_body(409, "this Idempotency-Key is being released; retry"))
            stored_hash, status, stored, seed, lease_left = found
            if stored_hash != request_hash:
                return Answer(
                    409,
                    error_body(
                        409,
                        "this Idempotency-Key was already used with a different request;"
                        " use a new key for a new request",
                    ),
                )
            if status is not None:
                return Answer(int(status), bytes(stored), sealed=True)
            if lease_left is not None and lease_left > 0:
                wait = max(1, math.ceil(lease_left))
                return Answer(
                    409,
                    error_body(
                        409,
                        "a request with this Idempotency-Key is still in progress;"
                        f" retry in {wait} s (it completes or is taken over by then)",
                    ),
                    retry_after_s=wait,
                )
            # The attempt before this one ended in 5xx or died: take its key over, same seed.
            seed = seed or new_id()
            await conn.execute(
                "UPDATE idempotency_keys SET seed = %s, lease_token = %s,"
                " lease_until = now() + %s * interval '1 second' WHERE scope = %s AND key = %s",
                (seed, token, LEASE_S, owner, key),
            )
            return Claimed(seed=seed, retry=True, token=token)

    @staticmethod
    async def _renew(pool: AsyncConnectionPool[Any], owner: str, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                async with pool.connection() as conn:
                    await conn.execute(
                        "UPDATE idempotency_keys SET lease_until = now() + %s * interval '1 second'"
                        " WHERE scope = %s AND key = %s AND lease_token = %s",
                        (LEASE_S, owner, key, token),
                    )
            except (psycopg.Error, PoolTimeout) as exc:
                log.debug("idempotency lease not renewed: %s", exc)

    @staticmethod
    async def _release(pool: AsyncConnectionPool[Any], owner: str, key: str, token: str) -> None:
        """The next attempt may take the key over at once (with the same seed). Only this
        attempt's lease: a renewal still in flight can no longer extend it."""
        try:
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE idempotency_keys SET lease_until = now(), lease_token = NULL"
                    " WHERE scope = %s AND key = %s AND lease_token = %s",
                    (owner, key, token),
                )
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("could not release an idempotency lease: %s", type(exc).__name__)

    @staticmethod
    async def _record(
        pool: AsyncConnectionPool[Any], owner: str, key: str, status: int, body: bytes
    ) -> None:
        try:
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE idempotency_keys SET status_code = %s, body = %s, lease_until = NULL,"
                    " lease_token = NULL WHERE scope = %s AND key = %s",
                    (status, body, owner, key),
                )
        except (psycopg.Error, PoolTimeout) as exc:
            # The outcome is already durable and its ids are fixed: a retry reproduces it.
            log.warning("could not record idempotent response: %s", type(exc).__name__)
