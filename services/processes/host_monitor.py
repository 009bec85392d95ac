"""Marks hosts lost when their agent stops heartbeating, and recovered when it comes back.

A heartbeat's subject (`hb.<host>`, which only that host's agent may publish on) says which host
is alive; its body is not trusted. Run by every deciders replica; the host decider makes repeated
marks no-ops."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from events.subjects import HEARTBEATS_ROOT, host_of_heartbeat
from services.deciders.host import HostState, MarkHostLost, MarkHostRecovered
from services.processes.fleet_view import FleetView
from services.processes.runner import DeciderRunner
from services.role_metrics import HEARTBEAT_AGES

log = logging.getLogger("gpuworker.hosts")

ACTOR = "system:host-monitor"


class HostMonitor:
    def __init__(
        self, nc: NatsClient, runner: DeciderRunner, fleet: FleetView, timeout_s: float = 10.0
    ) -> None:
        self._nc = nc
        self._runner = runner
        self._fleet = fleet
        self._timeout = timeout_s
        self._last_seen: dict[str, float] = {}
        self._started = time.monotonic()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{HEARTBEATS_ROOT}.>", cb=self._on_heartbeat)
        self._task = asyncio.create_task(self._check_forever())
        HEARTBEAT_AGES.sources.append(self._heard_from)

    def _heard_from(self) -> dict[str, float]:
        return dict(self._last_seen)

    async def stop(self) -> None:
        if self._heard_from in HEARTBEAT_AGES.sources:
            HEARTBEAT_AGES.sources.remove(self._heard_from)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        host_id = host_of_heartbeat(msg.subject)
        if host_id is None:
            return
        self._last_seen[host_id] = time.monotonic()
        host = self._fleet.get(host_id)
        if host is not None and not host.available:
            await self._mark(host_id, MarkHostRecovered(actor=ACTOR, at=datetime.now(UTC)))

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.check()

    async def check(self) -> None:
        now = time.monotonic()
        if now - self._started < self._timeout:
            return  # just started: give every agent one timeout to be heard
        for host in self._fleet.hosts():
            seen = self._last_seen.get(host.id, self._started)
            if host.available and now - seen > self._timeout:
                silent = now - seen
                noticed = datetime.now(UTC)
                await self._mark(
                    host.id,
                    MarkHostLost(
                        actor=ACTOR,
                        at=noticed,
                        reason=f"no heartbeat for {int(silent)}s",
                        last_heard_at=noticed - timedelta(seconds=silent),
                    ),
                )

    async def _mark(self, host_id: str, command: MarkHostLost | MarkHostRecovered) -> None:
        reply = await self._runner.run("host", host_id, command, f"monitor:{host_id}")
        if reply.error is None:
            self._fleet.offer(msgspec.json.decode(reply.state, type=HostState), reply.sequence)
            log.info("host %s: %s", host_id, type(command).__name__)
        else:
            log.warning("host %s: %s failed: %s", host_id, type(command).__name__, reply.error)
