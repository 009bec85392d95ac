"""An agent drives the containers of one or more hosts towards what the events say.

Level-triggered, like a kubelet: every instance on this agent's hosts is reconciled (desired status
from the events vs. what the runtime really has) when its events change, when the runtime reports
a death, and on a timer. The agent never decides business rules: it does the work and reports what
happened, with the time it happened, through the instance decider."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec
from nats.aio.client import Client as NatsClient

from events.host import HostGpu
from events.instance import LEGACY_RAM_GB_PER_GPU, LEGACY_VCPU_PER_GPU
from events.subjects import agent_command_subject, heartbeat_subject
from services.agent.disk_watch import DISK_CHECK_S, over_disk
from services.agent.host_work_feed import HostWorkFeed
from services.agent.host_workers import WORKER_KEY, HostWorkers
from services.agent.log_service import ContainerLogService
from services.agent.port_publishing import HostAddresses
from services.agent.registry_credentials import registry_of
from services.agent.runtime import (
    ContainerSpec,
    ContainerState,
    ImagePullFailed,
    InvalidContainerSpec,
    RegistryCredentials,
    Runtime,
)
from services.aggregate_follower import AggregateFollower
from services.api.command_bus import CommandBus
from services.deciders.decider import agent_actor
from services.deciders.host import RegisterHost
from services.deciders.instance import INSTANCE, InstanceState, Observation, ReportObservation
from services.deciders.volume import VOLUME, ReportVolume, VolumeState
from services.errors import GpuWorkerError
from services.role_metrics import AGENT_HEARTBEATS
from services.security.host_keys import HostKeys

log = logging.getLogger("gpuworker.agent")

# A container that cannot be created or started is tried this many times, waiting
# CREATE_BACKOFF_S, then twice as long, ... in between; then the instance FAILS (its GPU is freed).
CREATE_ATTEMPTS = 3
CREATE_BACKOFF_S = 1.0
CREATE_FAILED_REASON = (
    "the container could not be created or started ({attempts} attempts); check that the image"
    " runs here (a dockerStartCmd needs `sh` in the image), and its ports and volumeMountPath"
)


class HostSpec(msgspec.Struct, frozen=True, kw_only=True):
    host_id: str
    datacenter_id: str
    cloud_type: str
    gpus: list[HostGpu]
    inventory_source: str
    # Declared by the operator (GPUWORKER_HOST_DISK_GB); else the runtime measures it.
    disk_gb: int | None = None


class Heartbeat(msgspec.Struct, frozen=True):
    """Sent on `hb.<host>` for each host: the subject, which only that host's agent may publish
    on, says which host is alive; the body is for people reading the wire."""

    agent: str
    at: datetime


VOLUME_KEY = "volume:"


def network_volume_name(volume_id: str) -> str:
    return f"gpuworker-vol-{volume_id}"


def own_disk_name(instance_id: str) -> str:
    return f"gpuworker-{instance_id}-disk"


def instance_volume_name(state: InstanceState) -> str | None:
    """A network volume replaces the instance's own disk at the mount path."""
    if state.network_volume_id:
        return network_volume_name(state.network_volume_id)
    return own_disk_name(state.id) if state.container.volume_in_gb > 0 else None


def disk_to_delete(state: InstanceState | None, instance_id: str) -> str | None:
    """The volume that goes with the instance's container, named from the events, never from
    anything the container or its image says: its own disk; a network volume outlives it."""
    if state is not None and state.network_volume_id:
        return None
    return own_disk_name(instance_id)


# RunPod's convention, which images built for it read at start (into authorized_keys).
PUBLIC_KEY_ENV = "PUBLIC_KEY"


def container_env(state: InstanceState) -> dict[str, str]:
    """The instance's env, with the owner's SSH keys as PUBLIC_KEY (one per line) unless the
    instance sets PUBLIC_KEY itself."""
    keys = state.ssh_public_keys
    if not keys:
        return state.container.env
    return {PUBLIC_KEY_ENV: "\n".join(keys), **state.container.env}


def container_spec(
    state: InstanceState,
    real_gpus: bool,
    auth: RegistryCredentials | None = None,
    addresses: HostAddresses | None = None,
) -> ContainerSpec:
    container = state.container
    where = addresses or HostAddresses()
    return ContainerSpec(
        instance_id=state.id,
        image=container.image_name,
        owner_id=state.owner_id,
        registry_auth=auth,
        command=container.docker_start_cmd,
        env=container_env(state),
        ports=container.ports,
        publish=where.publish(container.ports, state.published_ports),
        authorized_keys=state.ssh_public_keys,
        # Declared (simulated) GPUs have made-up UUIDs that no driver knows.
        gpu_uuids=state.gpu_uuids if real_gpus else [],
        # What the customer rents with the GPUs (rate card, recorded at creation). Never 0:
        # to Docker that means no limit at all.
        memory_mb=1024 * (state.memory_in_gb or LEGACY_RAM_GB_PER_GPU * state.gpu_count),
        vcpus=state.vcpu_count or LEGACY_VCPU_PER_GPU * state.gpu_count,
        volume_name=instance_volume_name(state),
        volume_mount_path=container.volume_mount_path,
        generation=state.config_generation,
    )


def _outdated(state: InstanceState, actual: ContainerState) -> bool:
    return actual.generation is not None and actual.generation != state.config_generation


class HostAgent:
    def __init__(
        self,
        name: str,
        nc: NatsClient,
        bus: CommandBus,
        hosts: list[HostSpec],
        runtime: Runtime,
        heartbeat_s: float = 2.0,
        resync_s: float = 15.0,
        workers: int = 16,
        keys: HostKeys | None = None,
        create_attempts: int = CREATE_ATTEMPTS,
        create_backoff_s: float = CREATE_BACKOFF_S,
        disk_check_s: float = DISK_CHECK_S,
        addresses: HostAddresses | None = None,
        serverless: Callable[[Callable[[str], None], HostWorkFeed], HostWorkers] | None = None,
    ) -> None:
        """`serverless` makes what runs this agent's hosts' serverless workers (given how to
        schedule one); without it, the agent runs none."""
        self._addresses = addresses or HostAddresses()
        self._disk_check_s = disk_check_s
        # The host's work and its sealed secrets: an agent never reads the event stream.
        self._feed = HostWorkFeed(nc, name, keys, fleet=any(h.host_id != name for h in hosts))
        self._create_attempts = create_attempts
        self._create_backoff_s = create_backoff_s
        # Per instance: failed creates so far, and when the next one may be tried (loop time).
        self._failed_creates: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self.name = name
        self._nc = nc
        self._bus = bus
        self._hosts = {h.host_id: h for h in hosts}
        self._runtime = runtime
        self._heartbeat_s = heartbeat_s
        self._resync_s = resync_s
        self._workers = workers
        # This agent's hosts' instances, and the network volumes stored on its hosts.
        self._instances = AggregateFollower(
            INSTANCE,
            keep=lambda s: s.host_id in self._hosts,
            on_change=lambda s, _seq: self._schedule(s.id),
        )
        self._volumes = AggregateFollower(
            VOLUME,
            keep=lambda s: s.host_id in self._hosts,
            on_change=lambda s, _seq: self._schedule(VOLUME_KEY + s.id),
        )
        self._serverless = (
            serverless(self._schedule, self._feed) if serverless is not None else None
        )
        self._feed.add("instance", self._instances)
        self._feed.add("volume", self._volumes)
        if self._serverless is not None:
            self._feed.add("endpoint", self._serverless.endpoints)
        # Answers the api's log requests for this agent's instances and workers
        # (services/container_logs.py).
        self._logs = ContainerLogService(nc, list(self._hosts), runtime, self._host_of)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.reports = 0

    def instances(self) -> dict[str, InstanceState]:
        return dict(self._instances.states())

    def _host_of(self, container_id: str) -> str | None:
        """The host of a live container of this agent's (an instance or a worker)."""
        state = self._instances.get(container_id)
        if state is not None:
            return state.host_id if state.status != "TERMINATED" else None
        return self._serverless.host_of(container_id) if self._serverless else None

    async def start(self) -> None:
        # Bounded concurrency: a simulated fleet registers a thousand hosts at start.
        slots = asyncio.Semaphore(32)

        async def register(host: HostSpec) -> None:
            async with slots:
                await self._register(host)

        await asyncio.gather(*(register(h) for h in self._hosts.values()))
        # Everything they fold before the workers start is scheduled, and done once they do.
        await self._feed.follow()
        await self._reconcile_leftovers()
        await self._logs.start()
        self._tasks += [asyncio.create_task(self._work()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._tasks.append(asyncio.create_task(self._watch()))
        self._tasks.append(asyncio.create_task(self._resync()))
        if self._disk_check_s > 0:
            self._tasks.append(asyncio.create_task(self._watch_disks()))
        log.info(
            "agent %s ready: %d host(s), runtime %s",
            self.name,
            len(self._hosts),
            self._runtime.name,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._logs.stop()
        await self._feed.stop()
        if self._serverless is not None:
            await self._serverless.stop()
        await self._runtime.close()

    async def _register(self, host: HostSpec) -> None:
        disk_gb = host.disk_gb if host.disk_gb is not None else await self._runtime.storage_gb()
        delay = 0.2
        while True:
            try:
                await self._bus.send_on(
                    agent_command_subject(host.host_id, "host"),
                    host.host_id,
                    RegisterHost(
                        actor=agent_actor(host.host_id),
                        at=datetime.now(UTC),
                        datacenter_id=host.datacenter_id,
                        cloud_type=host.cloud_type,
                        gpus=host.gpus,
                        inventory_source=host.inventory_source,
                        runtime=self._runtime.name,
                        disk_gb=disk_gb,
                    ),
                    correlation_id=f"register:{host.host_id}",
                )
                return
            except GpuWorkerError as exc:
                if exc.code != 503:
                    raise
                log.warning("registering %s: %s; retrying", host.host_id, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def reconcile_volume(self, volume_id: str) -> None:
        state = self._volumes.get(volume_id)
        if state is None:
            return
        name = network_volume_name(volume_id)
        if state.status == "CREATING":
            try:
                await self._runtime.ensure_volume(
                    name,
                    {
                        "gpuworker.network-volume": volume_id,
                        "gpuworker.size-gb": str(state.size_gb),
                    },
                )
            except Exception as exc:
                await self._report_volume(
                    state, "failed", reason=f"could not create storage: {exc}"
                )
                return
            await self._report_volume(state, "provisioned")
        elif state.status == "AVAILABLE" and state.provisioned_gb < state.size_gb:
            # Docker named volumes have no size of their own: the quota is what we record.
            await self._report_volume(state, "resized", size_gb=state.size_gb)
        elif state.status == "DELETING":
            await self._runtime.remove_volume(name)
            await self._report_volume(state, "deleted")

    async def _report_volume(
        self,
        state: VolumeState,
        observed: Literal["provisioned", "resized", "failed", "deleted"],
        size_gb: int | None = None,
        reason: str | None = None,
    ) -> None:
        reply = await self._bus.send_on(
            agent_command_subject(state.host_id, "volume"),
            state.id,
            ReportVolume(
                actor=agent_actor(state.host_id),
                at=datetime.now(UTC),
                observed=observed,
                size_gb=size_gb,
                reason=reason,
            ),
            correlation_id=f"agent:{state.id}",
        )
        self.reports += 1
        fresh = msgspec.json.decode(reply.state, type=VolumeState | None)
        self._volumes.offer(state.id, fresh, reply.sequence)

    def _schedule(self, instance_id: str) -> None:
        if instance_id not in self._queued:
            self._queued.add(instance_id)
            self._queue.put_nowait(instance_id)

    async def _work(self) -> None:
        while True:
            instance_id = await self._queue.get()
            self._queued.discard(instance_id)
            lock = self._locks.setdefault(instance_id, asyncio.Lock())
            async with lock:
                try:
                    if instance_id.startswith(VOLUME_KEY):
                        await self.reconcile_volume(instance_id.removeprefix(VOLUME_KEY))
                    elif instance_id.startswith(WORKER_KEY) and self._serverless is not None:
                        await self._serverless.reconcile(instance_id.removeprefix(WORKER_KEY))
                    else:
                        await self.reconcile(instance_id)
                except asyncio.CancelledError:
                    raise
                except GpuWorkerError as exc:
                    log.warning("instance %s: %s (will retry)", instance_id, exc.message)
                except Exception:
                    log.exception("reconciling instance %s failed (will retry)", instance_id)

    async def _report(
        self,
        state: InstanceState,
        observed: Observation,
        at: datetime | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
        container: ContainerState | None = None,
    ) -> None:
        """`container`, with "running": the container it runs in now, whose published ports
        the report carries."""
        ports = (
            self._addresses.published(state.container.ports, container)
            if container is not None
            else None
        )
        reply = await self._bus.send_on(
            agent_command_subject(state.host_id, "instance"),
            state.id,
            ReportObservation(
                actor=agent_actor(state.host_id),
                at=at or datetime.now(UTC),
                observed=observed,
                exit_code=exit_code,
                reason=reason,
                # What this report is about: the run under this lease (a late report about an
                # earlier run is ignored by the decider).
                lease_id=state.lease_id,
                public_ip=self._addresses.public_ip if ports is not None else None,
                ports=ports,
            ),
            correlation_id=f"agent:{state.id}",
        )
        self.reports += 1
        fresh = msgspec.json.decode(reply.state, type=InstanceState | None)
        self._instances.offer(state.id, fresh, reply.sequence)

    async def reconcile(self, instance_id: str) -> None:
        state = self._instances.get(instance_id)
        if state is None:
            return
        actual = await self._runtime.inspect(instance_id)
        status = state.status
        if status in ("PENDING", "PROVISIONING"):
            await self._bring_up(state, actual)
        elif status == "RESTARTING":
            if actual.status == "missing":
                if (created := await self._create(state)) is None:
                    return
                running = created
            else:
                running = await self._runtime.restart(instance_id)
            await self._report(state, "running", running.started_at, container=running)
        elif status == "RUNNING":
            if actual.status in ("exited", "missing"):
                reason = actual.reason or (
                    "the container disappeared" if actual.status == "missing" else None
                )
                await self._report(state, "exited", actual.finished_at, actual.exit_code, reason)
            elif _outdated(state, actual):
                # Made for an older configuration (recorded on the container, so a restart of
                # this agent does not forget a change it had not applied yet).
                await self._recreate(state)
            elif self._ports_moved(state, actual):
                await self._report(state, "running", actual.started_at, container=actual)
        elif status == "STOPPING":
            if actual.status in ("running", "created"):
                actual = await self._runtime.stop(instance_id)
            await self._report(state, "stopped", actual.finished_at)
        elif status in ("STOPPED", "EXITED", "FAILED"):
            if actual.status == "running":
                await self._runtime.stop(instance_id)
        elif status == "TERMINATING":
            self._failed_creates.pop(instance_id, None)
            self._retry_at.pop(instance_id, None)
            await self._runtime.remove(instance_id, disk_to_delete(state, instance_id))
            await self._report(state, "terminated")
        elif status == "TERMINATED" and actual.status != "missing":
            await self._runtime.remove(instance_id, disk_to_delete(state, instance_id))

    async def _create(self, state: InstanceState) -> ContainerState | None:
        """Create and start the container with this tenant's registry credential, with backoff:
        None when it did not happen now (a retry is due later, or the instance was reported
        failed: the tenant may not use the image or it cannot be had, the spec is one no
        container may have, or `create_attempts` creates failed). Docker answers a refused
        create with a `destroy` of the half-made container; while a retry is due, such events
        (and resyncs) do not hurry it, which is what once made a loop of 1,233 attempts in 27 s."""
        loop = asyncio.get_running_loop()
        if self._retry_at.get(state.id, 0.0) > loop.time():
            return None
        auth = None
        if state.container.registry_auth_id:
            auth = self._feed.registry_credentials(
                state.host_id,
                state.container.registry_auth_id,
                state.owner_id,
                registry_of(state.container.image_name),
            )
        host = self._hosts[state.host_id]
        spec = container_spec(
            state, real_gpus=host.inventory_source == "nvml", auth=auth, addresses=self._addresses
        )
        try:
            created = await self._runtime.create_and_start(spec)
        except ImagePullFailed as exc:
            await self._give_up(state, str(exc))
            return None
        except InvalidContainerSpec as exc:
            log.warning("instance %s: container spec refused: %s", state.id, exc)
            await self._give_up(state, f"the container cannot be created: {exc}")
            return None
        except (asyncio.CancelledError, GpuWorkerError):
            raise
        except Exception as exc:
            attempts = self._failed_creates.get(state.id, 0) + 1
            # One line per attempt, without a traceback: the daemon's words stay in the log.
            log.warning(
                "instance %s: container create/start failed (attempt %d of %d): %s",
                state.id,
                attempts,
                self._create_attempts,
                str(exc).strip() or type(exc).__name__,
            )
            if attempts >= self._create_attempts:
                await self._give_up(state, CREATE_FAILED_REASON.format(attempts=attempts))
                return None
            self._failed_creates[state.id] = attempts
            delay = self._create_backoff_s * 2 ** (attempts - 1)
            self._retry_at[state.id] = loop.time() + delay
            loop.call_later(delay, self._schedule, state.id)
            return None
        self._failed_creates.pop(state.id, None)
        self._retry_at.pop(state.id, None)
        return created

    async def _give_up(self, state: InstanceState, reason: str) -> None:
        self._failed_creates.pop(state.id, None)
        self._retry_at.pop(state.id, None)
        await self._report(state, "failed", reason=reason)

    def _ports_moved(self, state: InstanceState, actual: ContainerState) -> bool:
        """Its container's ports are not where the instance says they are (made anew, or
        reported before ports were)."""
        published = self._addresses.published(state.container.ports, actual)
        public_ip = self._addresses.public_ip if published else state.public_ip
        return published != state.published_ports or (
            bool(published) and public_ip != state.public_ip
        )

    async def _bring_up(self, state: InstanceState, actual: ContainerState) -> None:
        if actual.status != "missing" and _outdated(state, actual):
            # A stopped container of an older configuration (new env, new SSH keys): made anew
            # on the same disk rather than started as it was.
            await self._runtime.remove(state.id)
            actual = ContainerState(instance_id=state.id, status="missing")
        if actual.status == "running":
            await self._report(state, "running", actual.started_at, container=actual)
            return
        if state.status == "PENDING":
            await self._report(state, "provisioning")
        if (running := await self._create(state)) is None:
            return
        if running.status == "running":
            await self._report(state, "running", running.started_at, container=running)
        else:
            await self._report(
                state, "exited", running.finished_at, running.exit_code, running.reason
            )

    async def _recreate(self, state: InstanceState) -> None:
        """Image, command, env or ports changed: a new container on the same disk (at the host
        ports the instance had, where they are still free)."""
        await self._runtime.remove(state.id)
        created = await self._create(state)
        if created is not None and created.status == "running":
            await self._report(state, "running", created.started_at, container=created)

    async def _reconcile_leftovers(self) -> None:
        """After a restart: containers with no live instance behind them are removed; instances
        whose containers vanished are found by the first reconcile of each.

        A container whose instance this host's work does not name at all loses its container
        but keeps its disk. Its GPUs must be freed, since the host's work gives them to others;
        but its data is deleted only on the word of a TERMINATED state. If the WORK stream was
        lost or made again, an agent that restarts before the deciders have published its work
        again sees nothing at all. It would otherwise wipe every customer's disk on the host.
        Once the work is back, an instance whose container went this way shows as EXITED, and
        starts again with its disk."""
        for container in await self._runtime.list_managed():
            if self._serverless is not None and self._serverless.knows(container.instance_id):
                continue  # a live worker's: its own reconcile looks after it
            state = self._instances.get(container.instance_id)
            if state is not None and state.status == "TERMINATED":
                log.warning("removing left-over container of instance %s", container.instance_id)
                await self._runtime.remove(
                    container.instance_id, disk_to_delete(state, container.instance_id)
                )
            elif state is None:
                log.warning(
                    "removing the container of instance %s, which this host's work does not"
                    " name; its disk, if it has one (%s), is kept: remove it by hand once the"
                    " instance is known to be gone",
                    container.instance_id,
                    own_disk_name(container.instance_id),
                )
                await self._runtime.remove(container.instance_id, None)

    async def _watch_disks(self) -> None:
        while True:
            await asyncio.sleep(self._disk_check_s)
            try:
                await self.check_disks()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking disk usage failed (will retry)")

    async def check_disks(self) -> None:
        """Stop every running instance that holds more than one of its disks allows."""
        running = [s for s in self._instances.states().values() if s.status == "RUNNING"]
        if not running:
            return
        names = sorted({n for s in running if (n := instance_volume_name(s))})
        usage = await self._runtime.disk_usage(names)
        volumes = dict(self._volumes.states())
        for instance_id, reason in over_disk(running, volumes, usage, instance_volume_name).items():
            async with self._locks.setdefault(instance_id, asyncio.Lock()):
                state = self._instances.get(instance_id)
                if state is None or state.status != "RUNNING":
                    continue
                log.warning("instance %s: %s", instance_id, reason)
                # Reported first: the container's death that follows is then expected.
                await self._report(state, "failed", reason=reason)
                await self._runtime.stop(instance_id)

    async def _heartbeat(self) -> None:
        encode = msgspec.json.Encoder().encode
        while True:
            if self._nc.is_connected:
                beat = encode(Heartbeat(agent=self.name, at=datetime.now(UTC)))
                try:
                    for host_id in self._hosts:
                        await self._nc.publish(heartbeat_subject(host_id), beat)
                    AGENT_HEARTBEATS.labels(self.name).inc()
                except Exception as exc:
                    log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(self._heartbeat_s)

    async def _watch(self) -> None:
        async for event in self._runtime.watch():
            if self._instances.get(event.instance_id) is not None:
                self._schedule(event.instance_id)
            elif self._serverless is not None and self._serverless.knows(event.instance_id):
                self._schedule(WORKER_KEY + event.instance_id)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._resync_s)
            for instance_id, state in list(self._instances.states().items()):
                if state.status != "TERMINATED":
                    self._schedule(instance_id)
            for volume_id, volume in list(self._volumes.states().items()):
                if volume.status in ("CREATING", "DELETING") or (
                    volume.provisioned_gb < volume.size_gb and volume.status == "AVAILABLE"
                ):
                    self._schedule(VOLUME_KEY + volume_id)
            if self._serverless is not None:
                for worker_id in self._serverless.worker_ids():
                    self._schedule(WORKER_KEY + worker_id)
                try:
                    await self._serverless.prune_relays()
                except Exception:
                    log.exception("pruning worker relays failed")
