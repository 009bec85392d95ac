"""The real runtime: containers through the Docker Engine API (the `docker` SDK).

Every blocking SDK call runs in a worker thread (`asyncio.to_thread`). Containers are named
`gpuworker-<instance id>` and carry the labels of `services.agent.runtime`, so an agent that
restarts finds its containers again (`list_managed`) and reconciles them with the events.

A container's labels are the image's labels merged with ours, and the image is the customer's: so
the runtime sets every `gpuworker.*` label itself (blanking any other the image brings), counts a
container as ours only when its name is the one we give (`gpuworker-<instance id>`) and its labels
agree, and never deletes anything because a label names it: `remove` deletes the volume its caller
names from its own records and, once unused, the tenant networks Docker says the container was on,
when they are ours by the same rule (services.agent.container_limits.is_our_network).

`watch()` reports every `die` and `destroy` of this host's managed containers, including the ones
this runtime caused itself (stop, restart, remove): Docker does not say who stopped a container, so
the agent compares an event with what it asked for."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import shutil
import tarfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import docker.types
import msgspec
import requests

from services.agent.container_limits import (
    NETWORK_PREFIX,
    ContainerLimits,
    contained,
    is_our_network,
    network_labels,
    tenant_network,
)
from services.agent.disk_watch import allocated_bytes
from services.agent.host_ports import (
    DEFAULT_HOST_PORTS,
    LABEL_PORTS,
    NoFreeHostPort,
    choose_host_ports,
    ports_label,
    reserved_in,
)
from services.agent.image_access import (
    NOT_FOUND_OR_DENIED,
    ImageAccess,
    pull_failed,
    pull_failure_reason,
)
from services.agent.runtime import (
    GATEWAY_PLACEHOLDER,
    GIB,
    LABEL_GENERATION,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    DiskUsage,
    HostPort,
    InvalidContainerSpec,
    LogLine,
    RegistryCredentials,
    RuntimeEvent,
    check_spec,
)
from services.container_input import port_key
from services.images.reference import ImageReference

log = logging.getLogger(__name__)

LABEL_PREFIX = "gpuworker."
CONTAINER_PREFIX = "gpuworker-"
# Docker's "never" for StartedAt / FinishedAt.
_ZERO_TIME_PREFIX = "0001-01-01"
# How long `remove` waits for Docker to really let go of a container or volume.
_GONE_TIMEOUT_S = 30.0
# Where an image keeps its SSH server, if it has one: root's authorized_keys are written then.
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/bin/sshd", "/usr/sbin/dropbear", "/usr/bin/dropbear")
# Log frames read ahead of the reader, at most (then Docker's stream waits).
_LOG_READ_AHEAD = 64
DEFAULT_LIMITS = ContainerLimits()


def container_name(instance_id: str) -> str:
    return f"{CONTAINER_PREFIX}{instance_id}"


def managed_labels(instance_id: str, host_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_INSTANCE: instance_id, LABEL_HOST: host_id}


def container_labels(
    instance_id: str,
    host_id: str,
    image_labels: Mapping[str, str] | None = None,
    generation: int = 0,
    host_ports: Mapping[str, HostPort] | None = None,
) -> dict[str, str]:
    """Ours, over every `gpuworker.*` label the image brings (blanked: Docker cannot drop an
    inherited label, but ours override it), so no image can speak for the runtime."""
    blanked = {k: "" for k in image_labels or {} if k.startswith(LABEL_PREFIX)}
    held = ports_label(host_ports or {})
    return {
        **blanked,
        **managed_labels(instance_id, host_id),
        LABEL_GENERATION: str(generation),
        # The host ports it holds, running or not (services/agent/host_ports.py).
        **({LABEL_PORTS: held} if held else {}),
    }


def is_ours(name: str, labels: Mapping[str, str], host_id: str) -> str | None:
    """The instance id of a container this runtime created on `host_id`, else None: its name is
    the one we give and its labels (which we set, over the image's) agree with it."""
    instance_id = labels.get(LABEL_INSTANCE, "")
    if (
        instance_id
        and name.lstrip("/") == container_name(instance_id)
        and labels.get(LABEL_MANAGED) == "true"
        and labels.get(LABEL_HOST) == host_id
    ):
        return instance_id
    return None


def _docker_port(port: str) -> str:
    """ "8888/http" -> "8888/tcp" (HTTP rides on TCP), "22/tcp" -> "22/tcp", "53/udp" stays."""
    key = port_key(port)
    if key is None:
        raise InvalidContainerSpec(f"field `ports`: invalid port {port!r}")
    return f"{key[0]}/{key[1]}"


def wanted_host_ports(spec: ContainerSpec, publish_host_ip: str) -> dict[str, HostPort]:
    """Where each declared port should be published, by Docker's key: as the spec says, else on
    `publish_host_ip` at any host port."""
    default = HostPort(host_ip=publish_host_ip)
    return {_docker_port(p): spec.publish.get(p, default) for p in spec.ports}


def container_create_kwargs(
    spec: ContainerSpec,
    host_id: str,
    publish_host_ip: str = "127.0.0.1",
    image_labels: Mapping[str, str] | None = None,
    limits: ContainerLimits = DEFAULT_LIMITS,
    host_cpus: int | None = None,
    host_ports: Mapping[str, HostPort] | None = None,
) -> dict[str, Any]:
    """The keyword arguments for `client.containers.create` that realise `spec` (pure), with its
    ports published where `host_ports` says (by Docker's key; see services/agent/host_ports.py),
    or, without it, where the spec asks (a host port of 0: Docker picks one at each start).
    Raises InvalidContainerSpec for a spec no container may have."""
    check_spec(spec)
    bindings = dict(host_ports) if host_ports else wanted_host_ports(spec, publish_host_ip)
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(spec.instance_id),
        "labels": container_labels(
            spec.instance_id, host_id, image_labels, spec.generation, bindings
        ),
        "environment": dict(spec.env),
        "detach": True,
        **contained(spec.memory_mb, spec.vcpus, spec.owner_id, host_id, limits, host_cpus),
    }
    if spec.command:
        kwargs["command"] = ["sh", "-c", spec.command]
    if bindings:
        kwargs["ports"] = {
            key: (port.host_ip, port.host_port) if port.host_port else (port.host_ip,)
            for key, port in bindings.items()
        }
    if spec.volume_name:
        kwargs["volumes"] = {spec.volume_name: {"bind": spec.volume_mount_path, "mode": "rw"}}
    if spec.gpu_uuids:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]])
        ]
    return kwargs


def _with_gateway(env: dict[str, str], names: list[str], gateway: str) -> dict[str, str]:
    """`env` with the gateway's address in place of GATEWAY_PLACEHOLDER in the vars `names`."""
    host = f"[{gateway}]" if ":" in gateway else gateway
    return {k: v.replace(GATEWAY_PLACEHOLDER, host) if k in names else v for k, v in env.items()}


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
    generation = ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_GENERATION, "")
    return ContainerState(
        ports=published_ports(attrs),
        instance_id=instance_id,
        status=status,
        exit_code=exit_code,
        reason=reason,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
        generation=int(generation) if generation.isdigit() else None,
    )


def published_ports(attrs: dict[str, Any]) -> dict[str, HostPort]:
    """Where a container's ports are published: while it runs, what Docker bound; else the
    fixed host ports of its bindings (a binding without one has no port while stopped)."""
    live = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    fixed = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    found: dict[str, HostPort] = {}
    for key, bindings in {**fixed, **{k: v for k, v in live.items() if v}}.items():
        for binding in bindings or []:
            port = str(binding.get("HostPort") or "")
            if port.isdigit() and int(port) > 0:
                found[key] = HostPort(host_ip=str(binding.get("HostIp") or ""), host_port=int(port))
                break
    return found


def parse_log_line(raw: bytes) -> LogLine:
    """A frame of `docker logs --timestamps`: "<RFC 3339 time> <text>"."""
    text = raw.decode("utf-8", errors="replace").rstrip("\n")
    stamp, sep, rest = text.partition(" ")
    at = None
    if sep and stamp[:1].isdigit():
        with contextlib.suppress(ValueError):
            at = parse_docker_time(stamp)
    return LogLine(at=at, text=rest if at is not None else text)


def _port_taken(exc: docker.errors.APIError) -> bool:
    """A start refused because a published host port is in use (by something else now)."""
    text = _explain(exc).lower()
    return "port is already allocated" in text or "address already in use" in text


def authorized_keys_archive(keys: list[str]) -> bytes:
    """A tar of root/.ssh (0700) and root/.ssh/authorized_keys (0600), owned by root, to unpack
    at the container's "/"."""
    content = "".join(f"{key}\n" for key in keys).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo("root/.ssh")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(folder)
        file = tarfile.TarInfo("root/.ssh/authorized_keys")
        file.mode, file.size = 0o600, len(content)
        tar.addfile(file, io.BytesIO(content))
    return buffer.getvalue()


def _auth_config(auth: RegistryCredentials | None) -> dict[str, str]:
    """The tenant's credential for one pull. No credential is `{}`, never None: with None the
    SDK would send the host's own `docker login` (~/.docker/config.json), lending the operator's
    access to every tenant."""
    if auth is None:
        return {}
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
        images: ImageAccess | None = None,
        limits: ContainerLimits = DEFAULT_LIMITS,
        host_ports: tuple[int, int] = DEFAULT_HOST_PORTS,
    ) -> None:
        self.host_id = host_id
        self._host_port_range = host_ports
        self._images = images if images is not None else ImageAccess()
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

    async def _verified_image(self, spec: ContainerSpec) -> str:
        """What to create `spec`'s container from, once this tenant's access to the image is
        verified: a digest reference or an image ID, never the customer's name (image_access)."""
        ref = self._images.reference(spec.image)
        if self._images.is_preloaded(ref):
            return await asyncio.to_thread(self._preloaded, spec.image, ref)
        cached = self._images.verified(spec.owner_id, ref, spec.registry_auth)
        if cached is not None:
            return cached
        await self._images.check_resolution(spec.image, ref)
        try:
            digest = await asyncio.wait_for(
                asyncio.to_thread(self._pull, ref, spec.registry_auth),
                timeout=self._pull_timeout_s,
            )
        except TimeoutError:
            log.warning("pull of %s timed out after %g s", spec.image, self._pull_timeout_s)
            raise pull_failed(
                spec.image, f"pull timed out after {self._pull_timeout_s:g} s: try again later"
            ) from None
        except Exception as exc:
            # The daemon's words are for the operator only: they can carry what a registry
            # (or whatever answered in its place) chose to say.
            detail = _explain(exc)
            log.warning("pull of %s for %s failed: %s", spec.image, spec.owner_id, detail)
            raise pull_failed(spec.image, pull_failure_reason(detail)) from None
        resolved = f"{ref.repository}@{digest}"
        self._images.remember(spec.owner_id, ref, spec.registry_auth, resolved)
        return resolved

    def _pull(self, ref: ImageReference, auth: RegistryCredentials | None) -> str:
        """Ask the registry, with this tenant's credential, which manifest `ref` names, then pull
        that digest (nothing to fetch when its layers are here); the digest.

        The asking is `GET /distribution/<ref>/json`, which always fetches the manifest: Docker's
        own pull of a digest it already has never contacts the registry, so it cannot be the
        check."""
        auth_config = _auth_config(auth)
        info = self._client.api.inspect_distribution(ref.canonical(), auth_config=auth_config)
        digest = str(info["Descriptor"]["digest"])
        if ref.digest is not None and digest != ref.digest:
            raise docker.errors.APIError(f"the registry named {digest}, not {ref.digest}")
        for line in self._client.api.pull(
            ref.repository, tag=digest, stream=True, decode=True, auth_config=auth_config
        ):
            if line.get("error"):
                raise docker.errors.APIError(str(line["error"]))
        return digest

    def _preloaded(self, image: str, ref: ImageReference) -> str:
        """The ID of an image the operator put here, found by its tag (or digest), never by an ID
        prefix that Docker would also accept."""
        try:
            found = self._client.images.get(ref.familiar())
        except docker.errors.ImageNotFound:
            log.warning("preloaded image %s is not on this host", ref.familiar())
            raise pull_failed(image, NOT_FOUND_OR_DENIED) from None
        if ref.digest is not None:
            names = found.attrs.get("RepoDigests") or []
            wanted = f"{ref.familiar_repository}@{ref.digest}"
        else:
            names, wanted = found.tags, f"{ref.familiar_repository}:{ref.tag_or_default}"
        if wanted not in names:
            raise pull_failed(image, NOT_FOUND_OR_DENIED)
        return str(found.id)

    # -- lifecycle ----------------------------------------------------------------------------

    async def create_and_start(self, spec: ContainerSpec) -> ContainerState:
        # Refused before any pull: a spec no container may have never reaches a registry.
        check_spec(spec)
        if self._host_cpus is None:
            self._host_cpus = int((await asyncio.to_thread(self._client.info)).get("NCPU") or 0)
        image = await self._verified_image(spec)
        try:
            return await asyncio.to_thread(self._create_and_start, spec, image)
        except docker.errors.ImageNotFound:
            # Removed from the host since it was verified: verify (and pull) once more.
            self._images.forget(spec.owner_id, spec.image, spec.registry_auth)
            image = await self._verified_image(spec)
            return await asyncio.to_thread(self._create_and_start, spec, image)

    def _create_and_start(self, spec: ContainerSpec, image: str) -> ContainerState:
        container = self._get(spec.instance_id)
        if container is None:
            container = self._create(spec, image, keep_wanted_ports=True)
        try:
            container.start()
        except docker.errors.APIError as exc:
            if not _port_taken(exc):
                raise
            # Its host port went to something else while it was stopped (or between choosing
            # and starting): made anew on free ports. Its own disk is a named volume and stays.
            log.warning(
                "instance %s: a host port is taken (%s); recreating it on free ports",
                spec.instance_id,
                _explain(exc),
            )
            container.remove(force=True, v=True)
            self._wait_gone(lambda: self._get(spec.instance_id) is None, "container")
            container = self._create(spec, image, keep_wanted_ports=False)
            container.start()
        container.reload()
        return state_from_attrs(spec.instance_id, container.attrs)

    def _create(self, spec: ContainerSpec, image: str, keep_wanted_ports: bool) -> Any:
        image_labels = self._client.images.get(image).labels
        if spec.volume_name:
            self._client.volumes.create(
                name=spec.volume_name, labels=managed_labels(spec.instance_id, self.host_id)
            )
        try:
            # One create at a time: the host ports chosen are reserved (on the container's
            # label) once it exists; and a tenant's network is never removed meanwhile.
            with self._network_lock:
                kwargs = container_create_kwargs(
                    msgspec.structs.replace(spec, image=image),
                    self.host_id,
                    self._publish_host_ip,
                    image_labels,
                    self._limits,
                    self._host_cpus,
                    self._host_ports(spec, keep_wanted_ports),
                )
                if spec.owner_id:
                    self._ensure_network(spec.owner_id)
                if spec.gateway_env:
                    kwargs["environment"] = _with_gateway(
                        kwargs["environment"], spec.gateway_env, self._gateway(spec.owner_id)
                    )
                container = self._client.containers.create(**kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: someone created it meanwhile; use that one
                raise
            return self._await_created(spec.instance_id)
        self._install_authorized_keys(container, spec.authorized_keys)
        return container

    def _host_ports(self, spec: ContainerSpec, keep_wanted: bool) -> dict[str, HostPort]:
        """A fixed, free host port for each declared port (see services/agent/host_ports.py)."""
        wanted = wanted_host_ports(spec, self._publish_host_ip)
        if not wanted:
            return {}
        if not keep_wanted:
            wanted = {key: HostPort(host_ip=port.host_ip) for key, port in wanted.items()}
        # Every engine-wide container we (or another agent on this engine) made holds its ports,
        # running or not.
        listed = self._client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        reserved = reserved_in(c.get("Labels") or {} for c in listed)
        try:
            return choose_host_ports(wanted, reserved, self._host_port_range)
        except NoFreeHostPort as exc:
            raise InvalidContainerSpec(f"field `ports`: {exc}") from None

    def _install_authorized_keys(self, container: Any, keys: list[str]) -> None:
        """Root's authorized_keys, before the first start, when the image has an SSH server."""
        if not keys or not any(self._has_path(container, path) for path in SSHD_PATHS):
            return
        container.put_archive("/", authorized_keys_archive(keys))

    def _has_path(self, container: Any, path: str) -> bool:
        # HEAD /containers/{id}/archive: the path's stat, without copying the file.
        url = self._client.api._url("/containers/{0}/archive", container.id)
        response = self._client.api.head(url, params={"path": path})
        return bool(response.status_code == 200)

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

    async def remove(self, instance_id: str, volume_name: str | None = None) -> None:
        await asyncio.to_thread(self._remove, instance_id, volume_name)

    def _remove(self, instance_id: str, volume_name: str | None) -> None:
        container = self._get(instance_id)
        if container is not None:
            try:
                # v: the anonymous volumes of the image's `VOLUME`s go with it (named ones,
                # like a network volume mounted over such a path, never do).
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress; wait for it
                    raise
        self._wait_gone(lambda: self._get(instance_id) is None, f"container {instance_id}")
        if container is not None:
            self._release_networks(container)
        if volume_name:
            self._remove_volume(volume_name)

    def _ensure_network(self, owner_id: str) -> None:
        """The tenant's bridge network on this host, made on first use. Docker keeps user-defined
        bridges apart (its DOCKER-ISOLATION iptables chains), so containers reach their own
        tenant's containers and no one else's."""
        name = tenant_network(owner_id, self.host_id)
        try:
            network = self._client.networks.get(name)
        except docker.errors.NotFound:
            self._client.networks.create(
                name,
                driver="bridge",
                check_duplicate=True,
                labels=network_labels(owner_id, self.host_id),
            )
            return
        # A network of that name we did not make is nobody's tenant network: no container of
        # ours joins it (the create fails, and the agent reports it).
        if not self._is_our_network(network):
            raise docker.errors.APIError(f"network {name} exists but was not made by this agent")

    async def tenant_gateway(self, owner_id: str) -> str | None:
        def gateway() -> str:
            with self._network_lock:
                self._ensure_network(owner_id)
                return self._gateway(owner_id)

        return await asyncio.to_thread(gateway)

    def _gateway(self, owner_id: str) -> str:
        """The tenant network's gateway: the host's address on it, as Docker assigned it."""
        network = self._client.networks.get(tenant_network(owner_id, self.host_id))
        for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
            if gateway := pool.get("Gateway"):
                return str(gateway)
        raise docker.errors.APIError(f"network {network.name} has no gateway address")

    def _is_our_network(self, network: Any) -> bool:
        return is_our_network(network.name, network.attrs.get("Labels") or {}, self.host_id)

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
                    if self._is_our_network(network):
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
        containers: dict[str, int] = {}
        for c in listed:
            names = c.get("Names") or []
            instance_id = is_ours(names[0] if names else "", c.get("Labels") or {}, self.host_id)
            if instance_id is not None:
                containers[instance_id] = int(c.get("SizeRw") or 0)
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
        states = []
        for c in containers:
            instance_id = is_ours(c.name, c.labels, self.host_id)
            if instance_id is not None:
                states.append(state_from_attrs(instance_id, c.attrs))
        return states

    async def logs(
        self, instance_id: str, *, tail: int, since: datetime | None, follow: bool
    ) -> AsyncGenerator[LogLine, None]:
        container = await asyncio.to_thread(self._require, instance_id)
        stream = await asyncio.to_thread(
            self._client.api.logs,
            container.id,
            stdout=True,
            stderr=True,
            stream=True,
            follow=follow,
            tail=tail,
            since=since,
            timestamps=True,
        )
        reader = _LogReader(stream, asyncio.get_running_loop())
        try:
            while (frame := await reader.next()) is not None:
                for piece in frame.splitlines():
                    yield parse_log_line(piece)
        finally:
            reader.close()

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
        """Our container of the instance, by the name we gave it; a container carrying our
        labels under any other name was not made by us and is not ours to touch."""
        try:
            container = self._client.containers.get(container_name(instance_id))
        except docker.errors.NotFound:
            return None
        if is_ours(container.name, container.labels, self.host_id) != instance_id:
            return None
        return container

    def _require(self, instance_id: str) -> Any:
        container = self._get(instance_id)
        if container is None:
            raise ContainerNotFound(f"no container for instance {instance_id}")
        return container


_END = object()


class _LogReader:
    """One `docker logs` stream, read by a thread of its own (a follow may wait for hours: never
    on asyncio's shared thread pool, which the runtime's other calls need), at most
    _LOG_READ_AHEAD frames ahead of the reader. `close` ends the stream and the thread."""

    def __init__(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._slots = threading.Semaphore(_LOG_READ_AHEAD)
        self._closed = threading.Event()
        threading.Thread(target=self._run, name="docker-logs", daemon=True).start()

    def _post(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        try:
            for frame in self._stream:
                while not self._slots.acquire(timeout=0.5):
                    if self._closed.is_set():
                        return
                if self._closed.is_set():
                    return
                self._post(frame)
        except Exception as exc:  # the daemon went away: the stream simply ends
            log.debug("docker logs stream ended: %s", exc)
        finally:
            self._post(_END)

    async def next(self) -> bytes | None:
        item = await self._queue.get()
        if item is _END:
            return None
        self._slots.release()
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._stream.close()


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
        # The attributes are the container's labels plus its name (and image, exit code).
        instance_id = is_ours(str(attributes.get("name", "")), attributes, self._host_id)
        action = raw.get("Action") or raw.get("status")
        if instance_id is None:
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
