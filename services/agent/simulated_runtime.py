"""A runtime without containers, for development and scale tests (as kwok simulates nodes).

Each instance is an in-memory state machine that changes on timers and shows what Docker would show:

- `create_and_start` takes `start_delay_s`, then the instance is "running" (idempotent by id).
- `stop` takes `start_delay_s`, then "exited" with code 143 (the process honoured SIGTERM).
- `restart` is stop + start; `remove` forgets the instance and the volume it is told to.
- `create_and_start` refuses what the Docker runtime refuses before any pull (image IDs,
  registries on local or private addresses: services/agent/image_access.py), fails with
  ImagePullFailed for any image whose name contains "does-not-exist" (the way to rehearse a pull
  failure) and takes every other name as pulled.
- `watch()` reports every death ("exited") and removal ("missing"), the ones this runtime caused
  included, as Docker's event stream does.
- Declared ports are "published" where the spec asks, at the host port asked for or else one
  derived from the instance id and port (stable across stop/start, as the Docker runtime's are);
  nothing listens there.
- `logs` holds what `write_log` (a test hook, like a process printing) and the simulation itself
  wrote ("started", "stopped"), in memory only.
- A container whose env is a serverless worker's runs a simulated worker
  (services/agent/simulated_worker.py) while it runs: it takes jobs from the api through the
  worker protocol and completes them. Its containers share the host's view of the network, so
  `tenant_gateway` is None (the agent gives such workers the api's own address).

Given a `state_file`, the simulated containers and volumes outlive the agent process, as Docker's
do: an agent that restarts finds its instances as they were (running ones still running) instead
of reporting them all exited.

Test hooks: `kill_from_outside` (like `docker kill`) and `remove_from_outside` (like `docker rm -f`,
which keeps the volume)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from services.agent import simulated_worker
from services.agent.host_ports import DEFAULT_HOST_PORTS
from services.agent.image_access import NOT_FOUND_OR_DENIED, ImageAccess, pull_failed
from services.agent.runtime import (
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    DiskUsage,
    HostPort,
    LogLine,
    RuntimeEvent,
    check_spec,
)
from services.container_input import port_key

UNPULLABLE_MARKER = "does-not-exist"
SIGTERM_EXIT_CODE = 143
SIGKILL_EXIT_CODE = 137


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Container:
    spec: ContainerSpec
    status: ContainerStatus = "created"
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # One start/stop at a time per container, as Docker serialises them.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What it "printed", and a wake-up for followers.
    output: list[LogLine] = field(default_factory=list)
    printed: asyncio.Event = field(default_factory=asyncio.Event)
    # The simulated serverless worker it runs, if its env is a worker's.
    worker: asyncio.Task[None] | None = None

    def state(self) -> ContainerState:
        return ContainerState(
            ports=simulated_ports(self.spec),
            generation=self.spec.generation,
            instance_id=self.spec.instance_id,
            status=self.status,
            exit_code=self.exit_code,
            reason=self.reason,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


def simulated_ports(spec: ContainerSpec) -> dict[str, HostPort]:
    """Where the spec's ports would be published: as asked, else a host port derived from the
    instance id and the port, so it is the same every time."""
    first, last = DEFAULT_HOST_PORTS
    found: dict[str, HostPort] = {}
    for port in spec.ports:
        key = port_key(port)
        if key is None:
            continue
        docker_key = f"{key[0]}/{key[1]}"
        want = spec.publish.get(port, HostPort(host_ip="127.0.0.1"))
        number = want.host_port
        if not number:
            digest = hashlib.sha256(f"{spec.instance_id}/{docker_key}".encode()).digest()
            number = first + int.from_bytes(digest[:4], "big") % (last - first + 1)
        found[docker_key] = HostPort(host_ip=want.host_ip, host_port=number)
    return found


class _Saved(msgspec.Struct, kw_only=True):
    """What survives the agent: every container's spec and last state, and the volumes."""

    containers: list[tuple[ContainerSpec, ContainerState]] = []
    volumes: dict[str, dict[str, str]] = {}


class _Watch(AsyncIterator[RuntimeEvent]):
    def __init__(self, subscribers: set[_Watch]) -> None:
        self.subscribers = subscribers
        self.queue: asyncio.Queue[RuntimeEvent | None] = asyncio.Queue()
        self.done = False

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> RuntimeEvent:
        if self.done:
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is None:
            self.done = True
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self.subscribers.discard(self)
        self.queue.put_nowait(None)


class SimulatedRuntime:
    """`Runtime` with no containers behind it."""

    name = "simulated"

    def __init__(
        self,
        host_id: str,
        start_delay_s: float = 0.05,
        clock: Callable[[], datetime] = _utc_now,
        state_file: Path | None = None,
        images: ImageAccess | None = None,
        storage_gb: int | None = None,
    ) -> None:
        self.host_id = host_id
        self._images = images if images is not None else ImageAccess()
        self._storage_gb = storage_gb
        # Bytes written by `fill` (test hook), per container (instance id) or volume name.
        self._filled: dict[str, int] = {}
        self.start_delay_s = start_delay_s
        self._clock = clock
        self._containers: dict[str, _Container] = {}
        # Named volumes: name -> files in it (path -> content).
        self.volumes: dict[str, dict[str, str]] = {}
        self._watches: set[_Watch] = set()
        self._state_file = state_file
        self._load()

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        saved = msgspec.json.decode(self._state_file.read_bytes(), type=_Saved)
        for spec, state in saved.containers:
            self._containers[spec.instance_id] = _Container(
                spec=spec,
                status=state.status,
                exit_code=state.exit_code,
                reason=state.reason,
                started_at=state.started_at,
                finished_at=state.finished_at,
            )
        self.volumes = saved.volumes

    def _save(self) -> None:
        if self._state_file is None:
            return
        saved = _Saved(
            containers=[(c.spec, c.state()) for c in self._containers.values()],
            volumes=self.volumes,
        )
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(saved))
        os.replace(tmp, self._state_file)

    async def create_and_start(self, spec: ContainerSpec) -> ContainerState:
        check_spec(spec)
        self._images.reference(spec.image)
        if UNPULLABLE_MARKER in spec.image:
            raise pull_failed(spec.image, NOT_FOUND_OR_DENIED)
        if spec.instance_id not in self._containers:
            self._containers[spec.instance_id] = _Container(spec=spec)
            if spec.volume_name:
                self.volumes.setdefault(spec.volume_name, {})
            self._save()
        return await self.start(spec.instance_id)

    async def start(self, instance_id: str) -> ContainerState:
        container = self._require(instance_id)
        async with container.lock:
            if container.status == "running":
                return container.state()
            await asyncio.sleep(self.start_delay_s)
            if self._containers.get(instance_id) is container:  # not removed meanwhile
                container.status = "running"
                container.exit_code = None
                container.reason = None
                container.started_at = self._clock()
                self._save()
                self.write_log(instance_id, "simulated container started")
                self._run_inside(container)
        return self._state(instance_id)

    def _run_inside(self, container: _Container) -> None:
        """What the image would run: a simulated worker for a worker's env; and an exit right
        after the start when the env asks for one (a crash-looping template)."""
        env = container.spec.env
        code = simulated_worker.exit_code(env)
        if code is not None:
            asyncio.get_running_loop().call_soon(self._exit_now, container, code)
        elif simulated_worker.is_worker(env):
            worker = simulated_worker.SimulatedWorker(env)
            container.worker = asyncio.create_task(
                worker.run(), name=f"worker {container.spec.instance_id}"
            )

    def _exit_now(self, container: _Container, code: int) -> None:
        if (
            container.status == "running"
            and self._containers.get(container.spec.instance_id) is container
        ):
            self.write_log(container.spec.instance_id, f"exiting with code {code}")
            self._die(container, code)

    async def stop(self, instance_id: str, timeout_s: float = 10) -> ContainerState:
        container = self._require(instance_id)
        async with container.lock:
            if container.status != "running":
                return container.state()
            await asyncio.sleep(min(self.start_delay_s, timeout_s))
            # Killed or removed meanwhile: that death stands.
            if self._containers.get(instance_id) is container and container.status == "running":
                self._die(container, SIGTERM_EXIT_CODE)
        return self._state(instance_id)

    async def restart(self, instance_id: str, timeout_s: float = 10) -> ContainerState:
        await self.stop(instance_id, timeout_s)
        return await self.start(instance_id)

    async def remove(self, instance_id: str, volume_name: str | None = None) -> None:
        if instance_id in self._containers:
            self.remove_from_outside(instance_id)
        if volume_name:
            self.volumes.pop(volume_name, None)
        self._save()

    async def inspect(self, instance_id: str) -> ContainerState:
        return self._state(instance_id)

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        del labels
        self.volumes.setdefault(name, {})
        self._save()

    async def remove_volume(self, name: str) -> None:
        self.volumes.pop(name, None)
        self._save()

    async def volume_exists(self, name: str) -> bool:
        return name in self.volumes

    async def storage_gb(self) -> int | None:
        return self._storage_gb

    async def disk_usage(self, volumes: list[str]) -> DiskUsage:
        def volume_bytes(name: str) -> int:
            files = self.volumes[name]
            return sum(len(text.encode()) for text in files.values()) + self._filled.get(name, 0)

        return DiskUsage(
            containers={i: self._filled.get(i, 0) for i in self._containers},
            volumes={name: volume_bytes(name) for name in volumes if name in self.volumes},
        )

    async def list_managed(self) -> list[ContainerState]:
        return [c.state() for c in self._containers.values()]

    async def logs(
        self, instance_id: str, *, tail: int, since: datetime | None, follow: bool
    ) -> AsyncGenerator[LogLine, None]:
        container = self._require(instance_id)
        lines = [
            line
            for line in container.output
            if since is None or (line.at is not None and line.at >= since)
        ]
        seen = len(container.output)
        for line in lines[-tail:] if tail > 0 else []:
            yield line
        while follow and self._containers.get(instance_id) is container:
            if container.status != "running" and seen == len(container.output):
                return
            container.printed.clear()
            if seen == len(container.output):
                await container.printed.wait()
            for line in container.output[seen:]:
                yield line
            seen = len(container.output)

    def watch(self) -> AsyncIterator[RuntimeEvent]:
        """Events from the moment of this call on."""
        watch = _Watch(self._watches)
        self._watches.add(watch)
        return watch

    async def tenant_gateway(self, owner_id: str) -> str | None:
        del owner_id
        return None

    async def close(self) -> None:
        for watch in list(self._watches):
            await watch.aclose()
        workers = [c.worker for c in self._containers.values() if c.worker is not None]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # -- test hooks: what an operator could do to a real container behind the agent's back ----

    def write_log(self, instance_id: str, text: str) -> None:
        """Like the container's process printing a line."""
        container = self._require(instance_id)
        container.output.append(LogLine(at=self._clock(), text=text))
        container.printed.set()

    def fill(self, name: str, size: int) -> None:
        """Like writing `size` bytes into a container (by instance id) or a volume (by name)."""
        self._filled[name] = self._filled.get(name, 0) + size

    def kill_from_outside(self, instance_id: str, exit_code: int = SIGKILL_EXIT_CODE) -> None:
        """Like `docker kill`: the instance dies at once with `exit_code`."""
        container = self._require(instance_id)
        if container.status != "running":
            raise RuntimeError(f"instance {instance_id} is not running")
        self._die(container, exit_code)

    def remove_from_outside(self, instance_id: str) -> None:
        """Like `docker rm -f`: killed if running, then gone; its named volume stays."""
        container = self._require(instance_id)
        if container.status == "running":
            self._die(container, SIGKILL_EXIT_CODE)
        del self._containers[instance_id]
        self._save()
        self._emit(
            RuntimeEvent(
                instance_id=instance_id,
                status="missing",
                reason="container removed",
                occurred_at=self._clock(),
            )
        )

    # -- internals ----------------------------------------------------------------------------

    def _die(self, container: _Container, exit_code: int) -> None:
        if container.worker is not None:
            container.worker.cancel()
            container.worker = None
        now = self._clock()
        container.status = "exited"
        container.exit_code = exit_code
        container.reason = f"exited with code {exit_code}"
        container.finished_at = now
        container.printed.set()  # a follower's stream ends with the container
        self._save()
        self._emit(
            RuntimeEvent(
                instance_id=container.spec.instance_id,
                status="exited",
                exit_code=exit_code,
                reason=container.reason,
                occurred_at=now,
            )
        )

    def _emit(self, event: RuntimeEvent) -> None:
        for watch in self._watches:
            watch.queue.put_nowait(event)

    def _state(self, instance_id: str) -> ContainerState:
        container = self._containers.get(instance_id)
        if container is None:
            return ContainerState(instance_id=instance_id, status="missing")
        return container.state()

    def _require(self, instance_id: str) -> _Container:
        container = self._containers.get(instance_id)
        if container is None:
            raise ContainerNotFound(f"no container for instance {instance_id}")
        return container
