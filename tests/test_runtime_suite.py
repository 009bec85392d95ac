"""One suite, every runtime: the Docker runtime (real containers) and the simulated one.

The `runtime` fixture is parametrized over the backends (as Litestar runs its store suite against
every store); what a test must do behind the runtime's back (`docker kill`, `docker rm -f`, write a
file in the volume) goes through the matching `backend` helper. The tests assert only what every
runtime guarantees: e.g. a stopped `sleep` exits with 137 under Docker (PID 1 ignores SIGTERM) and
143 under the simulation, so the suite asserts "exited" with an exit code, not which one."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import docker.types
import pytest

from services.agent.docker_runtime import (
    DockerRuntime,
    container_create_kwargs,
    container_name,
    parse_docker_time,
    state_from_attrs,
)
from services.agent.image_access import NOT_FOUND_OR_DENIED
from services.agent.runtime import (
    LABEL_GENERATION,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    ContainerNotFound,
    ContainerSpec,
    HostPort,
    ImagePullFailed,
    Runtime,
    RuntimeEvent,
)
from services.agent.simulated_runtime import SimulatedRuntime
from tests.docker_fixtures import (  # noqa: F401
    build_image,
    busybox_image,
    clean_host,
    docker_client,
)

UNPULLABLE = "local/does-not-exist:1"
# The label an older runtime read to find an instance's volume (issue 7, finding 1).
LABEL_VOLUME = "gpuworker.volume"
STOP_TIMEOUT_S = 1
EVENT_TIMEOUT_S = 10


class Backend(Protocol):
    """What a test needs to do to a runtime's containers without going through the runtime."""

    image: str

    def make_runtime(self, host_id: str) -> Runtime: ...

    async def assert_really_running(self, instance_id: str, host_id: str) -> None: ...

    async def container_count(self, instance_id: str) -> int: ...

    async def volume_exists(self, name: str) -> bool: ...

    async def write_file(self, instance_id: str, volume: str, path: str, text: str) -> None: ...

    async def read_file(self, instance_id: str, volume: str, path: str) -> str: ...

    async def kill_from_outside(self, instance_id: str) -> None: ...

    async def remove_from_outside(self, instance_id: str) -> None: ...

    async def image_id(self) -> str:
        """The image ID ("sha256:…") of `image` on this backend."""
        ...

    async def print_line(self, instance_id: str, text: str) -> None:
        """Like the container's main process printing `text` (what its logs show)."""
        ...

    async def hostile_image(self, labels: dict[str, str], volumes: list[str]) -> str:
        """An image a customer could have built: its own labels and `VOLUME`s (the simulated
        runtime has no images: it gives its plain one)."""
        ...


class DockerBackend:
    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        self.host_ids: list[str] = []
        self.runtimes: list[DockerRuntime] = []
        self.images: list[str] = []

    def make_runtime(self, host_id: str) -> Runtime:
        self.host_ids.append(host_id)
        runtime = DockerRuntime(host_id, self.client, pull_timeout_s=20)
        self.runtimes.append(runtime)
        return runtime

    async def assert_really_running(self, instance_id: str, host_id: str) -> None:
        # `docker ps`: running containers only.
        listed = await asyncio.to_thread(
            self.client.containers.list, filters={"label": f"{LABEL_INSTANCE}={instance_id}"}
        )
        assert [c.name for c in listed] == [container_name(instance_id)]
        container = listed[0]
        assert container.status == "running"
        assert container.labels[LABEL_MANAGED] == "true"
        assert container.labels[LABEL_INSTANCE] == instance_id
        assert container.labels[LABEL_HOST] == host_id
        bindings = container.attrs["HostConfig"]["PortBindings"]["8888/tcp"]
        assert bindings[0]["HostIp"] == "127.0.0.1"
        published = container.ports["8888/tcp"][0]
        assert published["HostIp"] == "127.0.0.1" and int(published["HostPort"]) > 0
        assert container.attrs["HostConfig"]["Memory"] == 64 * 2**20

    async def container_count(self, instance_id: str) -> int:
        found = await asyncio.to_thread(
            self.client.containers.list,
            all=True,
            filters={"label": f"{LABEL_INSTANCE}={instance_id}"},
        )
        return len(found)

    async def volume_exists(self, name: str) -> bool:
        try:
            await asyncio.to_thread(self.client.volumes.get, name)
        except docker.errors.NotFound:
            return False
        return True

    async def _exec(self, instance_id: str, command: str) -> str:
        container = await asyncio.to_thread(self.client.containers.get, container_name(instance_id))
        code, output = await asyncio.to_thread(container.exec_run, ["sh", "-c", command])
        assert code == 0, output
        return bytes(output).decode()

    async def write_file(self, instance_id: str, volume: str, path: str, text: str) -> None:
        await self._exec(instance_id, f"echo '{text}' > /workspace/{path}")

    async def read_file(self, instance_id: str, volume: str, path: str) -> str:
        return (await self._exec(instance_id, f"cat /workspace/{path}")).strip()

    async def kill_from_outside(self, instance_id: str) -> None:
        container = await asyncio.to_thread(self.client.containers.get, container_name(instance_id))
        await asyncio.to_thread(container.kill)

    async def remove_from_outside(self, instance_id: str) -> None:
        container = await asyncio.to_thread(self.client.containers.get, container_name(instance_id))
        await asyncio.to_thread(container.remove, force=True)

    async def image_id(self) -> str:
        image = await asyncio.to_thread(self.client.images.get, self.image)
        return str(image.id)

    async def print_line(self, instance_id: str, text: str) -> None:
        # PID 1's stdout is what Docker logs.
        await self._exec(instance_id, f"echo '{text}' > /proc/1/fd/1")

    async def hostile_image(self, labels: dict[str, str], volumes: list[str]) -> str:
        tag = f"local/hostile-{uuid.uuid4().hex[:10]}:1"
        instructions = [f"LABEL {k}={v}" for k, v in labels.items()]
        instructions += [f"VOLUME {path}" for path in volumes]
        await asyncio.to_thread(build_image, self.client, tag, *instructions)
        self.images.append(tag)
        return tag

    def cleanup(self) -> None:
        for host_id in self.host_ids:
            clean_host(self.client, host_id)
        for tag in self.images:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.images.remove(tag)


class SimulatedBackend:
    image = "local/busybox:latest"

    def __init__(self, state_dir: Path) -> None:
        self.runtimes: list[SimulatedRuntime] = []
        # Where each simulated host keeps its containers, so they outlive a runtime object.
        self.state_dir = state_dir

    def make_runtime(self, host_id: str) -> Runtime:
        runtime = SimulatedRuntime(
            host_id, start_delay_s=0.05, state_file=self.state_dir / f"{host_id}.json"
        )
        self.runtimes.append(runtime)
        return runtime

    def _owner(self, instance_id: str) -> SimulatedRuntime:
        for runtime in reversed(self.runtimes):  # the newest runtime of a host knows best
            if instance_id in {s.spec.instance_id for s in runtime._containers.values()}:
                return runtime
        raise AssertionError(f"no simulated runtime has instance {instance_id}")

    async def assert_really_running(self, instance_id: str, host_id: str) -> None:
        runtime = self._owner(instance_id)
        assert runtime.host_id == host_id
        assert (await runtime.inspect(instance_id)).status == "running"

    async def container_count(self, instance_id: str) -> int:
        count = 0
        for runtime in self.runtimes:
            count += sum(1 for s in await runtime.list_managed() if s.instance_id == instance_id)
        return count

    async def volume_exists(self, name: str) -> bool:
        return any(name in runtime.volumes for runtime in self.runtimes)

    async def write_file(self, instance_id: str, volume: str, path: str, text: str) -> None:
        runtime = self._owner(instance_id)
        assert (await runtime.inspect(instance_id)).status == "running"
        runtime.volumes[volume][path] = text

    async def read_file(self, instance_id: str, volume: str, path: str) -> str:
        runtime = self._owner(instance_id)
        assert (await runtime.inspect(instance_id)).status == "running"
        return runtime.volumes[volume][path]

    async def kill_from_outside(self, instance_id: str) -> None:
        self._owner(instance_id).kill_from_outside(instance_id)

    async def remove_from_outside(self, instance_id: str) -> None:
        self._owner(instance_id).remove_from_outside(instance_id)

    async def image_id(self) -> str:
        return "sha256:" + "5e" * 32

    async def print_line(self, instance_id: str, text: str) -> None:
        self._owner(instance_id).write_log(instance_id, text)

    async def hostile_image(self, labels: dict[str, str], volumes: list[str]) -> str:
        return self.image


@pytest.fixture
def docker_backend(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[DockerBackend]:
    backend = DockerBackend(docker_client, busybox_image)
    yield backend
    backend.cleanup()


@pytest.fixture
def simulated_backend(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend(tmp_path)


@pytest.fixture(params=["docker", "simulated"])
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[Runtime]:
    backend: DockerBackend | SimulatedBackend = request.getfixturevalue(f"{request.param}_backend")
    made = backend.make_runtime(f"test-{uuid.uuid4().hex[:10]}")
    yield made
    made_here: list[Runtime] = list(backend.runtimes)
    for each in made_here:
        await each.close()


@pytest.fixture
def backend(runtime: Runtime, request: pytest.FixtureRequest) -> Backend:
    """The helper for whichever backend `runtime` is (the same object the fixture used)."""
    kind = "docker" if isinstance(runtime, DockerRuntime) else "simulated"
    found: Backend = request.getfixturevalue(f"{kind}_backend")
    return found


def host_of(runtime: Runtime) -> str:
    assert isinstance(runtime, DockerRuntime | SimulatedRuntime)
    return runtime.host_id


def new_spec(backend: Backend, **overrides: Any) -> ContainerSpec:
    instance_id = f"i-{uuid.uuid4().hex[:12]}"
    fields: dict[str, Any] = {
        "instance_id": instance_id,
        "image": backend.image,
        "command": "sleep 3600",
        "env": {"GPUWORKER_TEST": "1"},
        "ports": ["8888/http"],
        "memory_mb": 64,
        "owner_id": "tenant-suite",
        "volume_name": f"gpuworker-test-vol-{instance_id}",
    }
    fields.update(overrides)
    return ContainerSpec(**fields)


async def next_event(
    watch: AsyncIterator[RuntimeEvent], instance_id: str, status: str
) -> RuntimeEvent:
    """The first event for `instance_id` with `status`, within EVENT_TIMEOUT_S."""

    async def find() -> RuntimeEvent:
        async for event in watch:
            if event.instance_id == instance_id and event.status == status:
                return event
        raise AssertionError("the watch ended without the event")

    return await asyncio.wait_for(find(), EVENT_TIMEOUT_S)


def _free_port() -> int:
    """A host port in the agent's range that nothing holds now."""
    from services.agent.host_ports import DEFAULT_HOST_PORTS, can_bind

    first, last = DEFAULT_HOST_PORTS
    return next(p for p in range(last, first, -1) if can_bind("127.0.0.1", p, "tcp"))


# -- the shared suite ---------------------------------------------------------------------------


async def test_create_and_start_runs_the_container(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    before = datetime.now(UTC)

    state = await runtime.create_and_start(spec)

    assert state.instance_id == spec.instance_id
    assert state.status == "running"
    assert state.exit_code is None and state.reason is None
    assert state.started_at is not None and state.started_at.tzinfo is not None
    assert abs((state.started_at - before).total_seconds()) < 30
    assert state.finished_at is None
    await backend.assert_really_running(spec.instance_id, host_of(runtime))
    assert (await runtime.inspect(spec.instance_id)).status == "running"
    assert [s.instance_id for s in await runtime.list_managed()] == [spec.instance_id]


async def test_a_runtime_started_again_finds_its_containers_as_they_were(
    runtime: Runtime, backend: Backend
) -> None:
    """The agent process restarted: its containers kept running meanwhile, as Docker's do."""
    running, stopped = new_spec(backend), new_spec(backend)
    await runtime.create_and_start(running)
    await runtime.create_and_start(stopped)
    await runtime.stop(stopped.instance_id, timeout_s=STOP_TIMEOUT_S)
    await runtime.close()

    again = backend.make_runtime(host_of(runtime))
    assert (await again.inspect(running.instance_id)).status == "running"
    assert (await again.inspect(stopped.instance_id)).status == "exited"
    assert {s.instance_id for s in await again.list_managed()} == {
        running.instance_id,
        stopped.instance_id,
    }
    assert running.volume_name is not None and await again.volume_exists(running.volume_name)
    await backend.assert_really_running(running.instance_id, host_of(runtime))


async def test_a_container_says_which_configuration_it_was_made_for(
    runtime: Runtime, backend: Backend
) -> None:
    """The instance's config generation is on the container (the runtime's own label, over any
    the image has), so an agent that restarts still sees a change it has not applied."""
    spec = new_spec(backend, generation=3)
    assert (await runtime.create_and_start(spec)).generation == 3
    await runtime.close()
    again = backend.make_runtime(host_of(runtime))
    assert (await again.inspect(spec.instance_id)).generation == 3
    (listed,) = [s for s in await again.list_managed() if s.instance_id == spec.instance_id]
    assert listed.generation == 3


async def test_stop_then_start_keeps_the_volume(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    assert spec.volume_name is not None
    await runtime.create_and_start(spec)
    await backend.write_file(spec.instance_id, spec.volume_name, "marker.txt", "still here")

    stopped = await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)

    assert stopped.status == "exited"
    assert stopped.exit_code is not None
    assert stopped.reason
    assert stopped.finished_at is not None and stopped.finished_at.tzinfo is not None
    assert (await runtime.inspect(spec.instance_id)).status == "exited"
    assert await backend.volume_exists(spec.volume_name)

    started = await runtime.start(spec.instance_id)

    assert started.status == "running"
    assert started.exit_code is None
    assert await backend.read_file(spec.instance_id, spec.volume_name, "marker.txt") == (
        "still here"
    )


async def test_disk_usage_counts_what_the_volume_holds(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    assert spec.volume_name is not None
    await runtime.create_and_start(spec)
    before = await runtime.disk_usage([spec.volume_name, "gpuworker-test-no-such-volume"])
    text = "x" * 5000
    await backend.write_file(spec.instance_id, spec.volume_name, "big.txt", text)

    after = await runtime.disk_usage([spec.volume_name])

    assert "gpuworker-test-no-such-volume" not in before.volumes
    assert after.volumes[spec.volume_name] >= before.volumes[spec.volume_name] + len(text)
    assert after.containers[spec.instance_id] >= 0


async def test_stop_is_harmless_when_already_stopped(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    await runtime.create_and_start(spec)
    await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)

    again = await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)

    assert again.status == "exited"


async def test_restart_runs_again(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    first = await runtime.create_and_start(spec)

    restarted = await runtime.restart(spec.instance_id, timeout_s=STOP_TIMEOUT_S)

    assert restarted.status == "running"
    assert first.started_at is not None and restarted.started_at is not None
    assert restarted.started_at > first.started_at
    assert (await runtime.inspect(spec.instance_id)).status == "running"


async def test_remove_deletes_container_and_volume(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    assert spec.volume_name is not None
    await runtime.create_and_start(spec)

    await runtime.remove(spec.instance_id, spec.volume_name)

    state = await runtime.inspect(spec.instance_id)
    assert state.status == "missing"
    assert await backend.container_count(spec.instance_id) == 0
    assert not await backend.volume_exists(spec.volume_name)
    assert await runtime.list_managed() == []
    await runtime.remove(spec.instance_id)  # missing is fine


async def test_remove_can_keep_the_volume(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    assert spec.volume_name is not None
    await runtime.create_and_start(spec)

    await runtime.remove(spec.instance_id)

    assert (await runtime.inspect(spec.instance_id)).status == "missing"
    assert await backend.volume_exists(spec.volume_name)
    await runtime.remove(spec.instance_id, spec.volume_name)  # the container gone already
    assert not await backend.volume_exists(spec.volume_name)


async def test_an_image_label_cannot_make_remove_delete_another_volume(
    runtime: Runtime, backend: Backend
) -> None:
    """An image labelled as if it owned someone else's volume, or were another instance on
    another host: the runtime's own labels win, and removal deletes nothing it was not told to."""
    victim = f"gpuworker-vol-test-{uuid.uuid4().hex[:12]}"
    await runtime.ensure_volume(victim, {})
    image = await backend.hostile_image(
        {
            LABEL_VOLUME: victim,
            LABEL_INSTANCE: f"i-{uuid.uuid4().hex[:12]}",
            LABEL_HOST: "someone-elses-host",
        },
        [],
    )
    spec = new_spec(backend, image=image, volume_name=None)
    await runtime.create_and_start(spec)
    assert [s.instance_id for s in await runtime.list_managed()] == [spec.instance_id]

    await runtime.remove(spec.instance_id)

    assert await backend.container_count(spec.instance_id) == 0
    assert await backend.volume_exists(victim)
    await runtime.remove_volume(victim)


async def test_removing_an_instance_keeps_the_network_volume_it_mounted(
    runtime: Runtime, backend: Backend
) -> None:
    """A network volume goes only through the volume's own lifecycle (`remove_volume`)."""
    network = f"gpuworker-vol-test-{uuid.uuid4().hex[:12]}"
    await runtime.ensure_volume(network, {})
    spec = new_spec(backend, volume_name=network)
    await runtime.create_and_start(spec)

    await runtime.remove(spec.instance_id)

    assert await backend.volume_exists(network)
    await runtime.remove_volume(network)
    assert not await backend.volume_exists(network)


async def test_create_and_start_is_idempotent(runtime: Runtime, backend: Backend) -> None:
    spec = new_spec(backend)
    await runtime.create_and_start(spec)

    again = await runtime.create_and_start(spec)

    assert again.status == "running"
    assert await backend.container_count(spec.instance_id) == 1
    assert len(await runtime.list_managed()) == 1


async def test_concurrent_create_and_start_makes_one_container(
    runtime: Runtime, backend: Backend
) -> None:
    spec = new_spec(backend)

    first, second = await asyncio.gather(
        runtime.create_and_start(spec), runtime.create_and_start(spec)
    )

    assert (first.status, second.status) == ("running", "running")
    assert await backend.container_count(spec.instance_id) == 1


async def test_create_and_start_starts_a_stopped_container(
    runtime: Runtime, backend: Backend
) -> None:
    spec = new_spec(backend)
    await runtime.create_and_start(spec)
    await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)

    again = await runtime.create_and_start(spec)

    assert again.status == "running"
    assert await backend.container_count(spec.instance_id) == 1


async def test_an_image_named_by_its_id_is_refused(runtime: Runtime, backend: Backend) -> None:
    """An image ID (or a prefix of one) says nothing about where the image came from: with it, one
    tenant could run another's private image already on the host."""
    image_id = await backend.image_id()
    hex_id = image_id.removeprefix("sha256:")
    for name in (image_id, hex_id, hex_id[:12], "sha256:" + hex_id[:12]):
        spec = new_spec(backend, image=name)
        with pytest.raises(ImagePullFailed) as failure:
            await runtime.create_and_start(spec)
        assert "image ID" in str(failure.value)
        assert (await runtime.inspect(spec.instance_id)).status == "missing"
    assert await runtime.list_managed() == []


async def test_an_image_that_cannot_be_had_fails_fast(runtime: Runtime, backend: Backend) -> None:
    started = time.monotonic()
    spec = new_spec(backend, image=UNPULLABLE)
    with pytest.raises(ImagePullFailed) as failure:
        await runtime.create_and_start(spec)
    assert str(failure.value) == f"image pull failed for {UNPULLABLE}: {NOT_FOUND_OR_DENIED}"
    assert time.monotonic() - started < 30
    assert (await runtime.inspect(spec.instance_id)).status == "missing"


async def test_a_preloaded_image_needs_no_registry(runtime: Runtime, backend: Backend) -> None:
    # No registry is reachable here: this passes only if an image the operator preloaded (the
    # default pattern `local/*`) is used as it is, without a pull.
    state = await runtime.create_and_start(new_spec(backend, owner_id="any-tenant"))
    assert state.status == "running"


async def test_a_container_killed_from_outside_is_reported(
    runtime: Runtime, backend: Backend
) -> None:
    spec = new_spec(backend)
    watch = runtime.watch()
    await runtime.create_and_start(spec)

    await backend.kill_from_outside(spec.instance_id)

    event = await next_event(watch, spec.instance_id, "exited")
    assert event.exit_code == 137  # SIGKILL, whatever the runtime
    assert event.occurred_at.tzinfo is not None
    assert abs((datetime.now(UTC) - event.occurred_at).total_seconds()) < 30
    state = await runtime.inspect(spec.instance_id)
    assert state.status == "exited"
    assert state.exit_code == 137


async def test_list_managed_shows_only_this_hosts_containers(
    runtime: Runtime, backend: Backend
) -> None:
    other = backend.make_runtime(f"test-{uuid.uuid4().hex[:10]}")
    mine, theirs = new_spec(backend), new_spec(backend)
    await runtime.create_and_start(mine)
    await other.create_and_start(theirs)
    await runtime.stop(mine.instance_id, timeout_s=STOP_TIMEOUT_S)

    listed = {s.instance_id: s.status for s in await runtime.list_managed()}
    listed_other = {s.instance_id: s.status for s in await other.list_managed()}

    assert listed == {mine.instance_id: "exited"}  # stopped ones are listed too
    assert listed_other == {theirs.instance_id: "running"}


async def test_a_container_removed_behind_our_back_is_missing(
    runtime: Runtime, backend: Backend
) -> None:
    spec = new_spec(backend)
    watch = runtime.watch()
    await runtime.create_and_start(spec)

    await backend.remove_from_outside(spec.instance_id)

    event = await next_event(watch, spec.instance_id, "missing")
    assert event.occurred_at.tzinfo is not None
    assert (await runtime.inspect(spec.instance_id)).status == "missing"
    assert spec.instance_id not in {s.instance_id for s in await runtime.list_managed()}


async def test_operations_on_a_missing_container_say_so(runtime: Runtime) -> None:
    missing = f"i-{uuid.uuid4().hex[:12]}"
    assert (await runtime.inspect(missing)).status == "missing"
    with pytest.raises(ContainerNotFound):
        await runtime.start(missing)
    with pytest.raises(ContainerNotFound):
        await runtime.stop(missing, timeout_s=STOP_TIMEOUT_S)
    with pytest.raises(ContainerNotFound):
        await runtime.restart(missing, timeout_s=STOP_TIMEOUT_S)
    await runtime.remove(missing)


async def test_ports_are_published_where_asked_and_stay_across_stop_and_start(
    runtime: Runtime, backend: Backend
) -> None:
    """Each declared port gets a host port of its own on the address the spec names, and keeps
    it when the container is stopped and started (an SSH address must not move)."""
    free = _free_port()
    spec = new_spec(
        backend,
        ports=["8888/http", "2222/tcp"],
        publish={
            "8888/http": HostPort(host_ip="127.0.0.1"),
            "2222/tcp": HostPort(host_ip="127.0.0.1", host_port=free),
        },
    )
    started = await runtime.create_and_start(spec)

    assert set(started.ports) == {"8888/tcp", "2222/tcp"}
    assert started.ports["2222/tcp"] == HostPort(host_ip="127.0.0.1", host_port=free)
    http = started.ports["8888/tcp"]
    assert http.host_ip == "127.0.0.1" and 1024 <= http.host_port <= 65535
    assert http.host_port != free

    await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)
    assert (await runtime.inspect(spec.instance_id)).ports == started.ports
    again = await runtime.start(spec.instance_id)

    assert again.ports == started.ports
    (listed,) = [s for s in await runtime.list_managed() if s.instance_id == spec.instance_id]
    assert listed.ports == started.ports


async def test_logs_show_what_the_container_printed_and_follow_new_lines(
    runtime: Runtime, backend: Backend
) -> None:
    spec = new_spec(backend)
    await runtime.create_and_start(spec)
    marker = f"hello-{uuid.uuid4().hex[:8]}"
    await backend.print_line(spec.instance_id, f"{marker} one")
    await backend.print_line(spec.instance_id, f"{marker} two")

    async def lines(**options: Any) -> list[str]:
        return [line.text async for line in runtime.logs(spec.instance_id, **options)]

    everything = await asyncio.wait_for(lines(tail=100, since=None, follow=False), 10)
    assert everything[-2:] == [f"{marker} one", f"{marker} two"], everything
    assert await asyncio.wait_for(lines(tail=1, since=None, follow=False), 10) == [f"{marker} two"]
    stamped = [
        line async for line in runtime.logs(spec.instance_id, tail=1, since=None, follow=False)
    ]
    assert stamped[0].at is not None and stamped[0].at.tzinfo is not None
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await asyncio.wait_for(lines(tail=100, since=future, follow=False), 10) == []

    # Follow: a line printed after the reading began arrives, then closing ends the stream.
    follow = runtime.logs(spec.instance_id, tail=0, since=None, follow=True)
    waiting = asyncio.ensure_future(anext(follow))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await backend.print_line(spec.instance_id, f"{marker} later")
    assert (await asyncio.wait_for(waiting, 10)).text == f"{marker} later"
    await follow.aclose()

    # A follower's stream ends when the container stops.
    ending = runtime.logs(spec.instance_id, tail=0, since=None, follow=True)
    last = asyncio.ensure_future(anext(ending, None))
    await asyncio.sleep(0.3)
    await runtime.stop(spec.instance_id, timeout_s=STOP_TIMEOUT_S)
    rest = [await asyncio.wait_for(last, 10)]
    rest += [line async for line in ending]
    assert all(line is None or marker not in line.text for line in rest)


async def test_logs_of_a_missing_container_say_so(runtime: Runtime) -> None:
    with pytest.raises(ContainerNotFound):
        async for _line in runtime.logs("i-missing", tail=10, since=None, follow=False):
            pass


async def test_close_ends_every_watch(runtime: Runtime) -> None:
    watch = runtime.watch()
    waiting = asyncio.ensure_future(anext(watch, None))
    await asyncio.sleep(0.1)

    await runtime.close()

    assert await asyncio.wait_for(waiting, EVENT_TIMEOUT_S) is None


# -- Docker specifics, pure: what `containers.create` is given ------------------------------


def test_create_kwargs_request_exactly_the_assigned_gpus() -> None:
    spec = ContainerSpec(
        instance_id="i-1",
        image="nvcr.io/nvidia/pytorch:24.01-py3",
        gpu_uuids=["GPU-aaaa", "GPU-bbbb"],
    )

    kwargs = container_create_kwargs(spec, "host-1")

    (request,) = kwargs["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["DeviceIDs"] == ["GPU-aaaa", "GPU-bbbb"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # the listed devices, not "all"


def test_create_kwargs_without_gpus_request_none() -> None:
    kwargs = container_create_kwargs(ContainerSpec(instance_id="i-1", image="x"), "host-1")

    assert "device_requests" not in kwargs
    assert "command" not in kwargs  # the image's own command
    assert "volumes" not in kwargs
    assert "ports" not in kwargs


def test_create_kwargs_carry_the_whole_spec() -> None:
    spec = ContainerSpec(
        instance_id="i-2",
        image="local/busybox:latest",
        command="jupyter lab --ip=0.0.0.0",
        env={"A": "1"},
        ports=["8888/http", "22/tcp", "53/udp"],
        memory_mb=2048,
        volume_name="vol-i-2",
        volume_mount_path="/data",
    )

    kwargs = container_create_kwargs(spec, "host-7")

    assert kwargs["name"] == "gpuworker-i-2"
    assert kwargs["command"] == ["sh", "-c", "jupyter lab --ip=0.0.0.0"]
    assert kwargs["environment"] == {"A": "1"}
    assert kwargs["mem_limit"] == "2048m"
    assert kwargs["ports"] == {
        "8888/tcp": ("127.0.0.1",),
        "22/tcp": ("127.0.0.1",),
        "53/udp": ("127.0.0.1",),
    }
    assert kwargs["volumes"] == {"vol-i-2": {"bind": "/data", "mode": "rw"}}
    assert kwargs["labels"] == {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: "i-2",
        LABEL_HOST: "host-7",
        LABEL_GENERATION: "0",
    }


def test_create_kwargs_blank_every_gpuworker_label_of_the_image() -> None:
    spec = ContainerSpec(instance_id="i-3", image="local/x:1")
    image_labels = {
        LABEL_VOLUME: "gpuworker-vol-someone-else",
        LABEL_INSTANCE: "i-other",
        LABEL_HOST: "other-host",
        LABEL_GENERATION: "99",
        "gpuworker.anything": "x",
        "org.opencontainers.image.title": "kept",
    }

    kwargs = container_create_kwargs(spec, "host-1", image_labels=image_labels)

    assert kwargs["labels"] == {
        LABEL_VOLUME: "",
        "gpuworker.anything": "",
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: "i-3",
        LABEL_HOST: "host-1",
        LABEL_GENERATION: "0",
    }


@pytest.mark.parametrize("port", ["http", "0/tcp", "70000/tcp", "80/icmp"])
def test_create_kwargs_reject_a_bad_port(port: str) -> None:
    with pytest.raises(ValueError, match="invalid port"):
        container_create_kwargs(ContainerSpec(instance_id="i", image="x", ports=[port]), "h")


def test_docker_times_are_aware_utc_and_zero_is_none() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("2026-11-29T06:25:07.517495383Z") == datetime(
        2026, 11, 29, 6, 25, 7, 517495, tzinfo=UTC
    )
    assert parse_docker_time("2026-11-29T07:25:07.5+01:00") == datetime(
        2026, 11, 29, 6, 25, 7, 500000, tzinfo=UTC
    )


def test_docker_state_reasons() -> None:
    def attrs(**state: Any) -> dict[str, Any]:
        base = {"StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}
        return {"State": {**base, **state}}

    oom = state_from_attrs("i", attrs(Status="exited", ExitCode=137, OOMKilled=True))
    assert (oom.status, oom.exit_code, oom.reason) == ("exited", 137, "OOMKilled")
    error = state_from_attrs("i", attrs(Status="exited", ExitCode=127, Error="exec: nope"))
    assert (error.exit_code, error.reason) == (127, "exec: nope")
    plain = state_from_attrs("i", attrs(Status="exited", ExitCode=3))
    assert plain.reason == "exited with code 3"
    assert state_from_attrs("i", attrs(Status="created")).status == "created"
    running = state_from_attrs("i", attrs(Status="running", ExitCode=0))
    assert (running.status, running.exit_code, running.reason) == ("running", None, None)
