"""Sends jobs' webhooks: POSTs a job's final status (the body `/status` answers) to the URL given
with the job, from the outbox the jobs projection fills (projections/jobs.py), and tries again
twice, GPUWORKER_WEBHOOK_RETRY_DELAY s apart (10 s), when the receiver does not answer 2xx.

It runs in every api process; a delivery is claimed (SKIP LOCKED, and a lease written on the row)
before it is sent, so two senders never send the same attempt, and no database connection is held
while a POST waits. The URL is checked again just before each attempt against what its name
resolves to then (services/webhook_policy.py); redirects are not followed."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.webhook_policy import WebhookRefused, check_resolved, check_url

log = logging.getLogger("gpuworker.webhooks")

ATTEMPTS = 3
POST_TIMEOUT_S = 10.0
# Longer than a POST may take: a sender that died mid-attempt leaves its claim to lapse.
CLAIM_S = 60
BATCH = 20
IDLE_S = 0.25

# The status body of a job (None: the job is gone).
Render = Callable[[str], Awaitable[bytes | None]]


class WebhookSender:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        render: Render,
        retry_delay_s: float,
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self._pool = pool
        self._render = render
        self._retry_delay_s = retry_delay_s
        self._allowed = allowed_hosts
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=POST_TIMEOUT_S, follow_redirects=False)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.send_due()
            except (psycopg.Error, PoolTimeout) as exc:
                log.debug("webhooks: database unavailable (%s)", exc)
                sent = 0
            except Exception:
                log.exception("webhooks: unexpected error")
                sent = 0
            if sent < BATCH:
                await asyncio.sleep(IDLE_S)

    async def send_due(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1,"
                " next_attempt_at = now() + %s * interval '1 second'"
                " WHERE (job_id, sequence) IN (SELECT job_id, sequence FROM webhook_deliveries"
                "  WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()"
                "  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING job_id, sequence, url, attempts",
                (CLAIM_S, BATCH),
            )
            due = await cur.fetchall()
        await asyncio.gather(*(self._attempt(*row) for row in due))
        return len(due)

    async def _attempt(self, job_id: str, sequence: int, url: str, attempts: int) -> None:
        error = await self._post(job_id, url)
        async with self._pool.connection() as conn:
            if error is None:
                await conn.execute(
                    "UPDATE webhook_deliveries SET delivered_at = now(), last_error = NULL"
                    " WHERE job_id = %s AND sequence = %s",
                    (job_id, sequence),
                )
            elif attempts >= ATTEMPTS or error.startswith("refused"):
                log.info(
                    "webhook of job %s given up after %d attempts: %s", job_id, attempts, error
                )
                await conn.execute(
                    "UPDATE webhook_deliveries SET gave_up_at = now(), last_error = %s"
                    " WHERE job_id = %s AND sequence = %s",
                    (error, job_id, sequence),
                )
            else:
                await conn.execute(
                    "UPDATE webhook_deliveries SET last_error = %s,"
                    " next_attempt_at = now() + %s * interval '1 second'"
                    " WHERE job_id = %s AND sequence = %s",
                    (error, self._retry_delay_s, job_id, sequence),
                )

    async def _post(self, job_id: str, url: str) -> str | None:
        """None when the receiver took it; else why not ("refused: …" is final)."""
        body = await self._render(job_id)
        if body is None:
            return "refused: the job is gone"
        try:
            parts = check_url(url, self._allowed)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            assert parts.hostname is not None
            found = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM
            )
            check_resolved(parts, [str(info[4][0]) for info in found], self._allowed)
        except WebhookRefused as exc:
            return f"refused: {exc}"
        except OSError as exc:
            return f"cannot resolve the webhook's host: {exc}"
        try:
            response = await self._client.post(
                url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"the receiver answered {response.status_code}"
