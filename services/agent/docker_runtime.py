"""The real runtime: containers through the Docker Engine API (the `docker` SDK).

Every blocking SDK call runs in a worker thread (`asyncio.to_thread`). Containers are named
`gpuworker-<instance id>` and carry the labels of `services.agent.runtime`, so an agent that
restarts finds its containers again (`list_managed`) and reconciles them with the events.

`watch()` reports every `die` and `destroy` of this host's managed containers, including the ones
this runtime caused itself (stop, restart, remove): Docker does not say who stopped a container, so
the agent compares an event with what it asked for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests

from services.agent.container_limits import (
    LABEL_TENANT,
    NETWORK_PREFIX,
    ContainerLimits,
    contained,
    tenant_hash,
    tenant_network,
)
from services.agent.disk_watch import allocated_bytes
from services.agent.runtime import (
    GIB,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    DiskUsage,
    ImagePullFailed,
    InvalidContainerSpec,
    RegistryCredentials,
    RuntimeEvent,
    check_spec,
)
from services.container_input import port_key

log = logging.getLogger(__name__)

# The instance's own volume, recorded on its container so `remove` finds it again.
LABEL_VOLUME = "gpuworker.volume"
CONTAINER_PREFIX = "gpuworker-"
# Docker's "never" for StartedAt / FinishedAt.
_ZERO_TIME_PREFIX = "0001-01-01"
# How long `remove` waits for Docker to really let go of a container or volume.
_GONE_TIMEOUT_S = 30.0
DEFAULT_LIMITS = ContainerLimits()


def container_name(instance_id: str) -> str:
    return f"{CONTAINER_PREFIX}{instance_id}"


def managed_labels(instance_id: str, host_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_INSTANCE: instance_id, LABEL_HOST: host_id}


def _docker_port(port: str) -> str:
    """ "8888/http" -> "8888/tcp" (HTTP rides on TCP), "22/tcp" -> "22/tcp", "53/udp" stays."""
    key = port_key(port)
    if key is None:
        raise InvalidContainerSpec(f"field `ports`: invalid port {port!r}")
    return f"{key[0]}/{key[1]}"


def container_create_kwargs(
    spec: ContainerSpec,
    host_id: str,
    publish_host_ip: str = "127.0.0.1",
    limits: ContainerLimits = DEFAULT_LIMITS,
    host_cpus: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments for `client.containers.create` that realise `spec` (pure).
    Raises InvalidContainerSpec for a spec no container may have."""
    check_spec(spec)
    labels = managed_labels(spec.instance_id, host_id)
    if spec.volume_name:
        labels[LABEL_VOLUME] = spec.volume_name
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(spec.instance_id),
        "labels": labels,
        "environment": dict(spec.env),
        "detach": True,
        **contained(spec.memory_mb, spec.vcpus, spec.owner_id, host_id, limits, host_cpus),
    }
    if spec.command:
        kwargs["command"] = ["sh", "-c", spec.command]
    if spec.ports:
        # Each exposed port goes to a random free host port on `publish_host_ip`.
        kwargs["ports"] = {_docker_port(p): (publish_host_ip,) for p in spec.ports}
    if spec.volume_name:
        kwargs["volumes"] = {spec.volume_name: {"bind": spec.volume_mount_path, "mode": "rw"}}
    if spec.gpu_uuids:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]])
        ]
    return kwargs


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 time (nanoseconds, "Z") as an aware UTC datetime; its zero time is None."""
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    text = value.replace("Z", "+00:00")
    # Keep at most microseconds: Python's datetime has no nanoseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{(digits + '000000')[:6]}{rest}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def time_from_nanos(nanos: int) -> datetime:
    seconds, rest = divmod(nanos, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)


def state_from_attrs(instance_id: str, attrs: dict[str, Any]) -> ContainerState:
    """Map `docker inspect` output to a ContainerState."""
    state: dict[str, Any] = attrs.get("State") or {}
    docker_status = str(state.get("Status", ""))
    status: ContainerStatus
    if docker_status in ("running", "paused", "restarting"):
        status = "running"
    elif docker_status == "created":
        status = "created"
    else:  # exited, dead, removing
        status = "exited"
    exit_code: int | None = None
    reason: str | None = None
    if status == "exited":
        exit_code = int(state.get("ExitCode", 0))
        if state.get("Error"):
            reason = str(state["Error"])
        elif state.get("OOMKilled"):
            reason = "OOMKilled"
        else:
            reason = f"exited with code {exit_code}"
    elif status == "created" and state.get("Error"):
        reason = str(state["Error"])
    return ContainerState(
        instance_id=instance_id,
        status=status,
        exit_code=exit_code,
        reason=reason,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
    )


def _auth_config(auth: RegistryCredentials | None) -> dict[str, str] | None:
    if auth is None:
        return None
    config = {"username": auth.username, "password": auth.password}
    if auth.registry:
        config["serveraddress"] = auth.registry
    return config


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip()
    return text or type(exc).__name__


class DockerRuntime:
    """`Runtime` on a Docker engine."""

    name = "docker"

    def __init__(
        self,
        host_id: str,
        client: docker.DockerClient | None = None,
        *,
        pull_timeout_s: float = 900.0,
        publish_host_ip: str = "127.0.0.1",
        limits: ContainerLimits = DEFAULT_LIMITS,
    ) -> None:
        self.host_id = host_id
        self._limits = limits
        self._host_cpus: int | None = None
        # Creating a tenant's network and removing it once unused must not interleave.
        self._network_lock = threading.Lock()
        self._owns_client = client is None
        self._client: docker.DockerClient = client if client is not None else docker.from_env()
        self._pull_timeout_s = pull_timeout_s
        self._publish_host_ip = publish_host_ip
        self._watches: set[_DockerWatch] = set()
        self._closed = False

    # -- images -------------------------------------------------------------------------------

    async def ensure_image(self, image: str, auth: RegistryCredentials | None) -> None:
        if await asyncio.to_thread(self._image_present, image):
            return
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    self._client.images.pull,
                    repository,
                    tag=tag or "latest",
                    auth_config=_auth_config(auth),
                ),
                timeout=self._pull_timeout_s,
            )
        except TimeoutError:
            raise ImagePullFailed(
                f"image pull failed for {image}: no result within {self._pull_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise ImagePullFailed(f"image pull failed for {image}: {_explain(exc)}") from exc

    def _image_present(self, image: str) -> bool:
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    async def create_and_start(self, spec: ContainerSpec) -> ContainerState:
        if self._host_cpus is None:
            self._host_cpus = int((await asyncio.to_thread(self._client.info)).get("NCPU") or 0)
        kwargs = container_create_kwargs(
            spec, self.host_id, self._publish_host_ip, self._limits, self._host_cpus
        )
        await self.ensure_image(spec.image, spec.registry_auth)
        return await asyncio.to_thread(self._create_and_start, spec, kwargs)

    def _create_and_start(self, spec: ContainerSpec, kwargs: dict[str, Any]) -> ContainerState:
        container = self._get(spec.instance_id)
        if container is None:
            if spec.volume_name:
                self._client.volumes.create(
                    name=spec.volume_name,
                    labels={
                        **managed_labels(spec.instance_id, self.host_id),
                        LABEL_VOLUME: spec.volume_name,
                    },
                )
            try:
                with self._network_lock:
                    if spec.owner_id:
                        self._ensure_network(spec.owner_id)
                    container = self._client.containers.create(**kwargs)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: someone created it meanwhile; use that one
                    raise
                container = self._await_created(spec.instance_id)
        container.start()
        container.reload()
        return state_from_attrs(spec.instance_id, container.attrs)

    def _await_created(self, instance_id: str) -> Any:
        """The container a concurrent create is making: Docker reserves the name a moment
        before the container can be inspected."""
        deadline = time.monotonic() + _GONE_TIMEOUT_S
        while (container := self._get(instance_id)) is None:
            if time.monotonic() > deadline:
                raise ContainerNotFound(f"container for instance {instance_id} never appeared")
            time.sleep(0.05)
        return container

    async def stop(self, instance_id: str, timeout_s: float = 10) -> ContainerState:
        return await asyncio.to_thread(self._stop, instance_id, timeout_s)

    def _stop(self, instance_id: str, timeout_s: float) -> ContainerState:
        container = self._require(instance_id)
        container.stop(timeout=max(0, math.ceil(timeout_s)))
        container.reload()
        return state_from_attrs(instance_id, container.attrs)

    async def start(self, instance_id: str) -> ContainerState:
        return await asyncio.to_thread(self._start, instance_id)

    def _start(self, instance_id: str) -> ContainerState:
        container = self._require(instance_id)
        container.start()
        container.reload()
        return state_from_attrs(instance_id, container.attrs)

    async def restart(self, instance_id: str, timeout_s: float = 10) -> ContainerState:
        return await asyncio.to_thread(self._restart, instance_id, timeout_s)

    def _restart(self, instance_id: str, timeout_s: float) -> ContainerState:
        container = self._require(instance_id)
        container.restart(timeout=max(0, math.ceil(timeout_s)))
        container.reload()
        return state_from_attrs(instance_id, container.attrs)

    async def remove(self, instance_id: str, remove_volume: bool = True) -> None:
        await asyncio.to_thread(self._remove, instance_id, remove_volume)

    def _remove(self, instance_id: str, remove_volume: bool) -> None:
        container = self._get(instance_id)
        volume_names: set[str] = set()
        if container is not None:
            volume = container.labels.get(LABEL_VOLUME)
            if volume:
                volume_names.add(volume)
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress; wait for it
                    raise
        self._wait_gone(lambda: self._get(instance_id) is None, f"container {instance_id}")
        if container is not None:
            self._release_networks(container)
        if not remove_volume:
            return
        found = self._client.volumes.list(
            filters={"label": [f"{LABEL_INSTANCE}={instance_id}", f"{LABEL_HOST}={self.host_id}"]}
        )
        volume_names.update(v.name for v in found)
        for name in volume_names:
            self._remove_volume(name)

    def _ensure_network(self, owner_id: str) -> None:
        """The tenant's bridge network on this host, made on first use. Docker keeps user-defined
        bridges apart (its DOCKER-ISOLATION iptables chains), so containers reach their own
        tenant's containers and no one else's."""
        name = tenant_network(owner_id, self.host_id)
        try:
            self._client.networks.get(name)
        except docker.errors.NotFound:
            self._client.networks.create(
                name,
                driver="bridge",
                check_duplicate=True,
                labels={
                    LABEL_MANAGED: "true",
                    LABEL_HOST: self.host_id,
                    LABEL_TENANT: tenant_hash(owner_id),
                },
            )

    def _release_networks(self, container: Any) -> None:
        """Remove the tenant networks the removed container was on once no container, in any
        state, is on them (a stopped container cannot start again without its network), so the
        engine's pool of subnets is not used up by tenants who have left."""
        networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        for name in networks:
            if not name.startswith(NETWORK_PREFIX):
                continue
            with self._network_lock:
                if self._client.containers.list(all=True, filters={"network": name}):
                    continue
                try:
                    network = self._client.networks.get(name)
                    if network.attrs.get("Labels", {}).get(LABEL_HOST) == self.host_id:
                        network.remove()
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:  # in use after all: keep it
                    log.warning("tenant network %s kept: %s", name, _explain(exc))

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        def create() -> None:
            try:
                self._client.volumes.get(name)
            except docker.errors.NotFound:
                self._client.volumes.create(
                    name=name,
                    labels={LABEL_MANAGED: "true", LABEL_HOST: self.host_id, **labels},
                )

        await asyncio.to_thread(create)

    async def remove_volume(self, name: str) -> None:
        await asyncio.to_thread(self._remove_volume, name)

    async def volume_exists(self, name: str) -> bool:
        def exists() -> bool:
            try:
                self._client.volumes.get(name)
            except docker.errors.NotFound:
                return False
            return True

        return await asyncio.to_thread(exists)

    async def storage_gb(self) -> int | None:
        """The file system of Docker's data root, which holds container layers and volumes.
        Unknown (None) when this agent cannot see it (a remote engine)."""

        def measure() -> int | None:
            root = str(self._client.info().get("DockerRootDir") or "")
            try:
                return shutil.disk_usage(root).total // GIB if root else None
            except OSError:
                return None

        return await asyncio.to_thread(measure)

    async def disk_usage(self, volumes: list[str]) -> DiskUsage:
        return await asyncio.to_thread(self._disk_usage, volumes)

    def _disk_usage(self, volumes: list[str]) -> DiskUsage:
        # `docker ps --size`: each container's writable layer (SizeRw), this host's only.
        listed = self._client.api.containers(
            all=True,
            size=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={self.host_id}"]},
        )
        containers = {
            str(c["Labels"][LABEL_INSTANCE]): int(c.get("SizeRw") or 0)
            for c in listed
            if (c.get("Labels") or {}).get(LABEL_INSTANCE)
        }
        sizes: dict[str, int] = {}
        unreadable: list[str] = []
        for name in volumes:
            try:
                mountpoint = str(self._client.volumes.get(name).attrs.get("Mountpoint") or "")
            except docker.errors.NotFound:
                continue
            size = allocated_bytes(mountpoint) if mountpoint else None
            if size is None:
                unreadable.append(name)
            else:
                sizes[name] = size
        if unreadable:
            # An engine whose files this agent cannot see measures its volumes itself (slower:
            # `docker system df -v` measures everything on it).
            for volume in self._client.df().get("Volumes") or []:
                size = int((volume.get("UsageData") or {}).get("Size", -1))
                if volume.get("Name") in unreadable and size >= 0:
                    sizes[volume["Name"]] = size
        return DiskUsage(containers=containers, volumes=sizes)

    def _remove_volume(self, name: str) -> None:
        def gone() -> bool:
            try:
                self._client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: still in use by a container going away
                    raise
                return False
            return False  # removed now; the next look confirms it is gone

        self._wait_gone(gone, f"volume {name}")

    @staticmethod
    def _wait_gone(gone: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _GONE_TIMEOUT_S
        while not gone():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} still present {_GONE_TIMEOUT_S:g} s after removal")
            time.sleep(0.05)

    # -- observing ----------------------------------------------------------------------------

    async def inspect(self, instance_id: str) -> ContainerState:
        return await asyncio.to_thread(self._inspect, instance_id)

    def _inspect(self, instance_id: str) -> ContainerState:
        container = self._get(instance_id)
        if container is None:
            return ContainerState(instance_id=instance_id, status="missing")
        return state_from_attrs(instance_id, container.attrs)

    async def list_managed(self) -> list[ContainerState]:
        return await asyncio.to_thread(self._list_managed)

    def _list_managed(self) -> list[ContainerState]:
        containers = self._client.containers.list(
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={self.host_id}"]},
            ignore_removed=True,
        )
        return [
            state_from_attrs(c.labels.get(LABEL_INSTANCE, ""), c.attrs)
            for c in containers
            if c.labels.get(LABEL_INSTANCE)
        ]

    def watch(self) -> AsyncIterator[RuntimeEvent]:
        """Events from the moment of this call on (Docker replays from then, so none is lost
        between this call and the first `anext`)."""
        watch = _DockerWatch(self._client, self.host_id, self._watches)
        self._watches.add(watch)
        return watch

    async def close(self) -> None:
        """Stops every watcher; closes the Docker client if this runtime made it."""
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            await watch.aclose()
        if self._owns_client:
            await asyncio.to_thread(self._client.close)

    # -- helpers ------------------------------------------------------------------------------

    def _get(self, instance_id: str) -> Any:
        try:
            return self._client.containers.get(container_name(instance_id))
        except docker.errors.NotFound:
            pass
        # A container of ours under another name (made by hand, or by an older agent) is still
        # ours: the labels, not the name, say which instance it belongs to.
        found = self._client.containers.list(
            all=True,
            ignore_removed=True,
            filters={"label": [f"{LABEL_INSTANCE}={instance_id}", f"{LABEL_HOST}={self.host_id}"]},
        )
        return found[0] if found else None

    def _require(self, instance_id: str) -> Any:
        container = self._get(instance_id)
        if container is None:
            raise ContainerNotFound(f"no container for instance {instance_id}")
        return container


_END = object()


class _DockerWatch(AsyncIterator[RuntimeEvent]):
    """One subscription to Docker's event stream, read by a daemon thread into an asyncio.Queue.

    The stream is opened with `since` = the moment `watch()` was called and reopened from the last
    event seen if the connection drops (dockerd restarted), so nothing in between is missed."""

    def __init__(
        self, client: docker.DockerClient, host_id: str, registry: set[_DockerWatch]
    ) -> None:
        self._client = client
        self._host_id = host_id
        self._registry = registry
        self._since_ns = time.time_ns()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._stop = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done = False

    def __aiter__(self) -> _DockerWatch:
        return self

    async def __anext__(self) -> RuntimeEvent:
        if self._done:
            raise StopAsyncIteration
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, name=f"docker-events-{self._host_id}", daemon=True
            )
            self._thread.start()
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        assert isinstance(item, RuntimeEvent)
        return item

    async def aclose(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 5)
        self._registry.discard(self)
        self._queue.put_nowait(_END)

    def _since(self) -> str:
        seconds, nanos = divmod(self._since_ns, 1_000_000_000)
        return f"{seconds}.{nanos:09d}"

    def _run(self) -> None:
        filters = {
            "type": "container",
            "event": ["die", "destroy"],
            "label": [f"{LABEL_HOST}={self._host_id}", f"{LABEL_MANAGED}=true"],
        }
        while not self._stop.is_set():
            try:
                stream = self._client.api.events(since=self._since(), filters=filters, decode=True)
            except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
                log.warning("docker events unavailable (%s); retrying in 1 s", _explain(exc))
                self._stop.wait(1.0)
                continue
            with self._lock:
                self._stream = stream
            if self._stop.is_set():
                stream.close()
                break
            try:
                for raw in stream:
                    self._handle(raw)
            except Exception as exc:  # the stream broke: reopen it from the last event seen
                log.warning("docker events stream broke (%s); reopening", _explain(exc))
            with self._lock:
                self._stream = None
            if not self._stop.is_set():
                self._stop.wait(0.5)

    def _handle(self, raw: dict[str, Any]) -> None:
        nanos = int(raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000)
        if nanos < self._since_ns:
            return
        self._since_ns = nanos + 1
        attributes: dict[str, Any] = (raw.get("Actor") or {}).get("Attributes") or {}
        instance_id = attributes.get(LABEL_INSTANCE)
        action = raw.get("Action") or raw.get("status")
        if not instance_id:
            return
        if action == "die":
            code_text = attributes.get("exitCode")
            exit_code = int(code_text) if code_text is not None else None
            event = RuntimeEvent(
                instance_id=instance_id,
                status="exited",
                exit_code=exit_code,
                reason=f"exited with code {exit_code}" if exit_code is not None else None,
                occurred_at=time_from_nanos(nanos),
            )
        elif action == "destroy":
            event = RuntimeEvent(
                instance_id=instance_id,
                status="missing",
                reason="container removed",
                occurred_at=time_from_nanos(nanos),
            )
        else:
            return
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(self._queue.put_nowait, event)
