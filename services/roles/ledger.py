"""`gpuworker ledger`: usage sessions and postings from the event stream, accruals at least every
minute, and spend control.

Replicas may run side by side: batches serialise on the ledger's checkpoint, accrual cycles on the
sessions' rows, and every posting's id is derived from what it covers, so two ledgers never charge
anything twice."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from events.subjects import billing_command_subject
from ledger.accruals import accrue_open_sessions
from ledger.consumer import LedgerProjection
from ledger.spend_control import over_limit, running_instances
from projections.migrate import migrate
from projections.runner import ProjectionRunner
from services.api.command_bus import CommandBus
from services.config import Settings
from services.deciders.entitlements import BILLING_ACTOR
from services.deciders.instance import StopInstance
from services.errors import GpuWorkerError
from services.nats_connection import connect_role
from services.nats_permissions import LEDGER_USER
from services.roles.lifecycle import until_signalled, wait_for_stream

log = logging.getLogger("gpuworker.ledger")


class Accruals:
    """The timer: accrue every open session, then stop what a customer can no longer pay for."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        bus: CommandBus,
        lock: asyncio.Lock,
        interval_s: float,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._lock = lock
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        # Stops already asked for (user, instance): asked again only if it is still running later.
        self._asked: set[tuple[str, str]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-accruals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self.cycle(datetime.now(UTC))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("accrual cycle skipped: database unavailable (%s)", exc)
            except Exception:
                log.exception("accrual cycle failed; next one in %ss", self._interval)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self._interval - elapsed))

    async def cycle(self, now: datetime) -> int:
        async with self._lock, self._pool.connection() as conn:
            async with conn.transaction():
                posted = await accrue_open_sessions(conn, now)
            verdicts = await over_limit(conn, now)
            stops = [
                (v, instance_id)
                for v in verdicts
                for instance_id in await running_instances(conn, v.user_id)
            ]
        still = {(v.user_id, i) for v, i in stops}
        self._asked &= still
        for v, instance_id in stops:
            if (v.user_id, instance_id) in self._asked:
                continue
            await self._stop(instance_id, f"stopped by billing: {v.message}")
            self._asked.add((v.user_id, instance_id))
        return posted

    async def _stop(self, instance_id: str, reason: str) -> None:
        command = StopInstance(actor=BILLING_ACTOR, at=datetime.now(UTC), reason=reason)
        try:
            await self._bus.send_on(
                billing_command_subject("instance"), instance_id, command, f"billing:{instance_id}"
            )
            log.warning("instance %s %s", instance_id, reason)
        except GpuWorkerError as exc:
            # 409: already stopping or stopped; the next cycle looks again if it still runs.
            log.info("instance %s not stopped by billing: %s", instance_id, exc.message)


async def run_ledger(settings: Settings) -> None:
    await migrate(settings.database_url)
    nc: NatsClient = await connect_role(settings, LEDGER_USER)
    await wait_for_stream(nc)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=4, open=False
    )
    await pool.open()
    lock = asyncio.Lock()
    runner = ProjectionRunner(nc, pool, [LedgerProjection(lock)])
    await runner.start()
    accruals = Accruals(
        pool, CommandBus(nc, settings.request_timeout_s), lock, settings.accrual_interval_s
    )
    accruals.start()
    log.info("ledger ready: accruing every %gs", settings.accrual_interval_s)
    try:
        await until_signalled()
    finally:
        await accruals.stop()
        await runner.stop()
        await nc.close()
        await pool.close()
