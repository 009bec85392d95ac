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
from ledger.spend_control import (
    Verdict,
    endpoints_to_hold,
    held_endpoints,
    limit_reached,
    over_limit,
    running_instances,
)
from projections.migrate import migrate
from projections.runner import ProjectionRunner
from services.api.command_bus import CommandBus
from services.config import Settings
from services.deciders.endpoint import ResumeEndpoint, SuspendEndpoint
from services.deciders.entitlements import BILLING_ACTOR
from services.deciders.instance import StopInstance
from services.errors import GpuWorkerError
from services.nats_connection import connect_role
from services.nats_permissions import LEDGER_USER
from services.role_metrics import LEDGER_ACCRUED, LEDGER_BUDGET_STOPS, LEDGER_LAST_ACCRUAL
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
        # Endpoints held at zero already (user, endpoint), likewise.
        self._holding: set[tuple[str, str]] = set()

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
                LEDGER_ACCRUED.inc(await self.cycle(datetime.now(UTC)))
                LEDGER_LAST_ACCRUAL.set_to_current_time()
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
            holds = [
                (v, endpoint_id)
                for v in verdicts
                for endpoint_id in await endpoints_to_hold(conn, v.user_id)
            ]
            over = {v.user_id for v in verdicts}
            releases = [
                endpoint_id
                for endpoint_id, owner_id in await held_endpoints(conn)
                if owner_id not in over and await limit_reached(conn, owner_id, now) is None
            ]
        still = {(v.user_id, i) for v, i in stops}
        self._asked &= still
        for v, instance_id in stops:
            if (v.user_id, instance_id) in self._asked:
                continue
            await self._stop(instance_id, f"stopped by billing: {v.message}")
            LEDGER_BUDGET_STOPS.inc()
            self._asked.add((v.user_id, instance_id))
        await self._hold_endpoints(holds, releases)
        return posted

    async def _hold_endpoints(self, holds: list[tuple[Verdict, str]], releases: list[str]) -> None:
        """Serverless endpoints of customers past a limit are held at zero workers (their
        autoscaler stops every worker and adds none); those of customers who can pay again are
        let go. The read model lags the commands: the endpoint's decider ignores a repeat."""
        asked = {(v.user_id, e) for v, e in holds}
        self._holding &= asked
        for v, endpoint_id in holds:
            if (v.user_id, endpoint_id) in self._holding:
                continue
            # The limit without the instance's advice ("then start it again"): an endpoint is
            # let go on its own.
            limit = v.message.rsplit(": ", 1)[0]
            reason = f"held at zero workers by billing: {limit}; let go once you can pay again"
            if await self._billing("endpoint", endpoint_id, SuspendEndpoint, reason=reason):
                log.warning("endpoint %s %s", endpoint_id, reason)
            self._holding.add((v.user_id, endpoint_id))
        for endpoint_id in releases:
            if await self._billing("endpoint", endpoint_id, ResumeEndpoint):
                log.info("endpoint %s let go by billing: its owner can pay again", endpoint_id)

    async def _billing(
        self, aggregate: str, aggregate_id: str, command_type: type[Any], **fields: Any
    ) -> bool:
        command = command_type(actor=BILLING_ACTOR, at=datetime.now(UTC), **fields)
        try:
            await self._bus.send_on(
                billing_command_subject(aggregate),
                aggregate_id,
                command,
                f"billing:{aggregate_id}",
            )
        except GpuWorkerError as exc:
            log.info("%s %s: billing's %s refused: %s", aggregate, aggregate_id, command, exc)
            return False
        return True

    async def _stop(self, instance_id: str, reason: str) -> None:
        # Refused (409: already stopping or stopped): the next cycle looks again if it still runs.
        if await self._billing("instance", instance_id, StopInstance, reason=reason):
            log.warning("instance %s %s", instance_id, reason)


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
