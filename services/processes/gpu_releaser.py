"""Gives GPUs back: every event that ends an instance's lease (stopped, exited, failed,
terminated) or a serverless worker's (stopped, never started) becomes a ReleaseGpus on its host; a
terminated instance is also detached from its network volume.

A durable consumer, so a release is never lost (at least once), and releases are idempotent by
lease id, so a redelivery frees nothing twice and never a newer lease."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.catalog import decode_event
from events.delivery import stream_sequence
from events.endpoint import WorkerStartFailed, WorkerStopped
from events.instance import InstanceExited, InstanceFailed, InstanceStopped, InstanceTerminated
from events.subjects import STREAM, aggregate_type_filter
from services.deciders.endpoint import EndpointState
from services.deciders.host import HostState, Lease, ReleaseGpus
from services.deciders.instance import InstanceState
from services.deciders.volume import DetachVolume
from services.processes.fleet_view import FleetView
from services.processes.runner import DeciderRunner

log = logging.getLogger("gpuworker.gpu-releaser")

DURABLE = "gpu_releaser"
ACTOR = "system:gpu-releaser"
SWEEP_EVERY_S = 30.0
ORPHAN_AFTER = timedelta(minutes=2)
LEASE_ENDING = (InstanceExited, InstanceFailed, InstanceStopped, InstanceTerminated)
WORKER_LEASE_ENDING = (WorkerStopped, WorkerStartFailed)


class GpuReleaser:
    def __init__(self, nc: NatsClient, runner: DeciderRunner, fleet: FleetView) -> None:
        self._js = nc.jetstream(timeout=5)
        self._runner = runner
        self._fleet = fleet
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.released = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gpu-releaser")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="gpu-sweeper")

    async def stop(self) -> None:
        for task in (self._task, self._sweeper):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep(datetime.now(UTC))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gpu sweep failed; next one in %ss", SWEEP_EVERY_S)

    async def sweep(self, now: datetime) -> int:
        """Free leases no instance holds: left when placement died between allocating and
        creating (or starting) the instance. Only leases older than ORPHAN_AFTER, so placements
        in progress are never touched. Returns how many were freed."""
        freed = 0
        for host in self._fleet.hosts():
            for lease in host.leases().values():
                if lease.allocated_at is None or now - lease.allocated_at < ORPHAN_AFTER:
                    continue
                if await self._held(lease):
                    continue
                log.warning(
                    "freeing orphaned lease %s of instance %s on host %s",
                    lease.lease_id,
                    lease.instance_id,
                    host.id,
                )
                await self._release_on(host.id, lease.instance_id, lease.lease_id)
                freed += 1
        return freed

    async def _held(self, lease: Lease) -> bool:
        """Whether the lease's holder (an instance, or a worker of an endpoint) still holds it."""
        if lease.endpoint_id is not None:
            endpoint, _seq = await self._runner.current("endpoint", lease.endpoint_id)
            worker = (
                endpoint.live_workers.get(lease.instance_id)
                if isinstance(endpoint, EndpointState)
                else None
            )
            return worker is not None and worker.placement.lease_id == lease.lease_id
        instance, _seq = await self._runner.current("instance", lease.instance_id)
        return isinstance(instance, InstanceState) and instance.lease_id == lease.lease_id

    async def _subscribe(self) -> Any:
        await self._js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                filter_subjects=[
                    aggregate_type_filter("instance"),
                    aggregate_type_filter("endpoint"),
                ],
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
            ),
        )
        return await self._js.pull_subscribe_bind(durable=DURABLE, stream=STREAM)

    async def _run(self) -> None:
        psub: Any = None
        while True:
            try:
                if psub is None:
                    psub = await self._subscribe()
                try:
                    msgs = await psub.fetch(100, timeout=1.0)
                except TimeoutError:
                    continue
                for msg in msgs:
                    event = decode_event(msg.data, stream_sequence(msg))
                    data = event.data
                    if isinstance(data, LEASE_ENDING) and data.lease_id:
                        await self.release(event.aggregate.id, data.lease_id)
                    if isinstance(data, WORKER_LEASE_ENDING) and data.lease_id and data.host_id:
                        await self._release_on(data.host_id, data.worker_id, data.lease_id)
                    if isinstance(event.data, InstanceTerminated):
                        await self.detach(event.aggregate.id)
                    await msg.ack()
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("gpu releaser: %s; re-subscribing", exc or type(exc).__name__)
                psub = None
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("gpu releaser: unexpected error; retrying")
                psub = None
                await asyncio.sleep(1.0)

    async def detach(self, instance_id: str) -> None:
        """A terminated instance no longer protects its network volume from deletion."""
        instance, _seq = await self._runner.current("instance", instance_id)
        if not isinstance(instance, InstanceState) or instance.network_volume_id is None:
            return
        reply = await self._runner.run(
            "volume",
            instance.network_volume_id,
            DetachVolume(actor=ACTOR, at=datetime.now(UTC), instance_id=instance_id),
            f"detach:{instance_id}",
        )
        if reply.error is not None and reply.error.code != 404:
            raise nats.errors.Error(f"detach failed: {reply.error.message}")

    async def release(self, instance_id: str, lease_id: str) -> None:
        instance, _seq = await self._runner.current("instance", instance_id)
        if not isinstance(instance, InstanceState):
            return
        await self._release_on(instance.host_id, instance_id, lease_id)

    async def _release_on(self, host_id: str, instance_id: str, lease_id: str) -> None:
        reply = await self._runner.run(
            "host",
            host_id,
            ReleaseGpus(
                actor=ACTOR, at=datetime.now(UTC), instance_id=instance_id, lease_id=lease_id
            ),
            f"release:{instance_id}",
        )
        if reply.error is not None:
            # Raising keeps the message unacked: it is redelivered and retried.
            raise nats.errors.Error(f"release failed: {reply.error.message}")
        self._fleet.offer(msgspec.json.decode(reply.state, type=HostState), reply.sequence)
        self.released += 1
