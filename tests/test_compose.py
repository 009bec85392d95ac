"""compose.yaml, deploy/nats/*.conf and the Dockerfile: the production shape, checked offline.

The compose file is resolved by a real compose implementation (`docker-compose`, from Debian's
`docker-compose` package, which `.ci/run` installs); its absence is a failure, never a skip. The
NATS node configs are checked by nats-server itself, and run as a real three-node cluster on
loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from events.store import JetStreamEventStore
from services.cli.embedded import free_port, nats_server_binary, wait_for_port
from services.cli.main import _parser
from services.nats_connection import NatsLogin, connect_nats, nats_servers
from services.nats_credentials import new_password
from services.nats_permissions import (
    DECIDERS_USER,
    authorization_block,
    deployment_users,
    password_variable,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
ROLES = ("api", "deciders", "projector", "ledger", "audit")
# The GPU hosts compose.yaml's NATS users cover: its own simulated agent and one that joins.
COMPOSE_AGENTS = [("host-1", False), ("host-2", False)]
NATS_PASSWORDS = {
    password_variable(user.name): f"dummy-nats-{user.name}-password"
    for user in deployment_users(COMPOSE_AGENTS)
}
SECRETS = {
    "POSTGRES_PASSWORD": "dummy-postgres-password",
    "GPUWORKER_SECRET_KEY": "ZHVtbXktc2VjcmV0LWtleS1mb3ItY29tcG9zZS10ZXN0IQ==",
    "GPUWORKER_JWT_SECRET": "dummy-jwt-secret",
    "GPUWORKER_HOST_1_KEY": "ZHVtbXktaG9zdC1rZXktZm9yLWNvbXBvc2UtdGVzdHMhIQ==",
    **NATS_PASSWORDS,
}


def compose_command() -> list[str]:
    """The compose implementation to resolve compose.yaml with; a missing one fails the test."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    ci = " (CI=true: this is an error)" if os.environ.get("CI") == "true" else ""
    pytest.fail(
        "no compose implementation found: `apt-get install docker-compose` (.ci/run does)" + ci
    )


def run_compose_config(env_overrides: dict[str, str], drop: tuple[str, ...] = ()) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k not in drop}
    env.update(env_overrides)
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = run_compose_config(SECRETS)
    assert result.returncode == 0, f"compose config failed:\n{result.stdout}\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def nats_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services_of(compose).items()
        if str(svc.get("image", "")).split(":")[0] in ("nats", "docker.io/library/nats")
    }


def built_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services_of(compose).items() if "build" in svc}


def as_list(command: Any) -> list[str]:
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, whether the tool prints the short or the long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target = volume.split(":")[:2]
            found.append((source, target))
    return found


def nats_config_file(service: dict[str, Any]) -> Path:
    command = as_list(service["command"])
    flag = next(i for i, part in enumerate(command) if part in ("-c", "--config"))
    target = command[flag + 1]
    sources = [source for source, t in mounts(service) if t == target]
    assert len(sources) == 1, f"{target} is not mounted from one file: {service.get('volumes')}"
    path = Path(sources[0])
    return path if path.is_absolute() else ROOT / path


def cli_roles() -> set[str]:
    parser = _parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def test_compose_config_resolves(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    assert {"postgres", *ROLES} <= services.keys()
    assert str(services["postgres"]["image"]).startswith("postgres:18")


def test_compose_refuses_to_run_without_secrets() -> None:
    result = run_compose_config({}, drop=tuple(SECRETS))
    assert result.returncode != 0
    assert "set " in result.stderr, result.stderr
    assert all(value not in compose_text() for value in SECRETS.values())


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def test_three_nats_nodes_of_a_version_with_subject_filtered_concurrency(
    compose: dict[str, Any],
) -> None:
    nodes = nats_services(compose)
    assert len(nodes) == 3, sorted(nodes)
    for name, svc in nodes.items():
        tag = str(svc["image"]).rsplit(":", 1)[1]
        match = re.match(r"(\d+)\.(\d+)", tag)
        assert match, f"{name}: pin the nats image to a version, not {tag!r}"
        assert (int(match[1]), int(match[2])) >= (2, 11), f"{name}: nats {tag} < 2.11"
        assert "healthcheck" in svc, name
        # The store lives on a named volume, so JetStream data outlives the container.
        assert any(source in compose["volumes"] for source, _ in mounts(svc)), name


def node_accepts(passwords: dict[str, str]) -> bool:
    """Whether nats-server loads node n1's config with these passwords in its environment."""
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(ROOT / "deploy/nats/n1.conf")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **passwords},
    )
    return checked.returncode == 0


def test_generated_nats_passwords_load_as_environment_variables() -> None:
    """nats-server parses `password: $VAR` values like config tokens: a password starting with
    `-` (one urlsafe token in 64) or made of digits stops the node. Generated ones never do."""
    variable = password_variable(DECIDERS_USER)
    assert not node_accepts({**NATS_PASSWORDS, variable: "-" + new_password()})
    assert not node_accepts({**NATS_PASSWORDS, variable: "12345"})
    for _ in range(20):
        assert node_accepts({**NATS_PASSWORDS, **{v: new_password() for v in NATS_PASSWORDS}})


def test_nats_configs_fsync_always_and_route_to_each_other(compose: dict[str, Any]) -> None:
    nodes = nats_services(compose)
    names = set()
    for name, svc in nodes.items():
        path = nats_config_file(svc)
        text = path.read_text()
        jetstream = re.search(r"jetstream\s*\{([^}]*)\}", text)
        assert jetstream, f"{path}: no jetstream block"
        assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream[1], re.M), path
        store = re.search(r"store_dir:\s*\"?([^\s\"]+)", jetstream[1])
        assert store, f"{path}: no store_dir"
        targets = [target for _, target in mounts(svc)]
        assert any(store[1].startswith(t.rstrip("/") + "/") or store[1] == t for t in targets), (
            f"{path}: store_dir {store[1]} is not on a mounted volume ({targets})"
        )
        routes = set(re.findall(r"nats-route://([\w.-]+):\d+", text))
        assert routes == set(nodes) - {name}, f"{path}: routes {routes}"
        server_name = re.search(r"^server_name:\s*\"?([\w-]+)", text, re.M)
        assert server_name, f"{path}: no server_name"
        names.add(server_name[1])
        checked = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **NATS_PASSWORDS},
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(names) == 3, names


def test_nats_nodes_require_a_login_with_each_roles_permissions(compose: dict[str, Any]) -> None:
    for name, svc in nats_services(compose).items():
        text = nats_config_file(svc).read_text()
        assert re.search(r'^include "auth.conf"$', text, re.M), f"{name}: no authorization"
        auth = ROOT / "deploy/nats/auth.conf"
        assert any(
            (ROOT / source).resolve() == auth and target == "/etc/nats/auth.conf"
            for source, target in mounts(svc)
        ), f"{name}: {auth} is not mounted beside nats.conf"
        env = svc["environment"]
        for variable, value in NATS_PASSWORDS.items():
            assert env[variable] == value, f"{name}: {variable}"
    # The shipped users are exactly what `gpuworker nats authorization` renders.
    shipped = (ROOT / "deploy/nats/auth.conf").read_text()
    assert authorization_block(deployment_users(COMPOSE_AGENTS)) in shipped


def test_roles_are_real_cli_commands_from_one_image(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    built = built_services(compose)
    assert set(ROLES) <= built.keys()
    roles = cli_roles()
    for name, svc in built.items():
        command = as_list(svc["command"])
        assert command[0] == "gpuworker", f"{name}: {command}"
        assert command[1] in roles, f"{name}: `{command[1]}` is not a gpuworker command"
        _parser().parse_args(command[1:])  # flags too: exits (fails) on anything unknown
    for role in ROLES:
        assert as_list(services[role]["command"])[1] == role
    images = {str(svc.get("image")) for svc in built.values()}
    assert len(images) == 1 and None not in images, images
    contexts = set()
    for svc in built.values():
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
        assert dockerfile in (None, "Dockerfile")
        contexts.add(Path(context if Path(context).is_absolute() else ROOT / context).resolve())
    assert contexts == {ROOT}


def test_roles_get_the_cluster_the_database_and_secrets(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    nodes = set(nats_services(compose))
    for role in ROLES:
        svc = services[role]
        env = svc["environment"]
        assert isinstance(env, dict), f"{role}: environment should be a mapping"
        assert env["GPUWORKER_STREAM_REPLICAS"] == "3"
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:" in env["DATABASE_URL"]
        servers = nats_servers(env["NATS_URL"])
        assert {re.sub(r"^nats://([\w.-]+):4222$", r"\1", s) for s in servers} == nodes
        for key in ("GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET"):
            assert env[key] == SECRETS[key]
        # Each role logs in to NATS as its own user.
        assert env["GPUWORKER_NATS_USER"] == role
        assert env["GPUWORKER_NATS_PASSWORD"] == SECRETS[password_variable(role)]
        deps = svc["depends_on"]
        assert isinstance(deps, dict)
        for dep in ("postgres", *nodes):
            assert deps[dep]["condition"] == "service_healthy", f"{role} -> {dep}"
        if "migrate" in services:
            assert deps["migrate"]["condition"] == "service_completed_successfully"
    # The api and the NATS nodes listen on loopback unless the operator says otherwise.
    for name, target in (("api", 8080), *((node, 4222) for node in sorted(nodes))):
        assert published_ports(services[name]) == [("127.0.0.1", target)], name
    assert "healthcheck" in services["postgres"]


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each published port, short or long syntax."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((str(port.get("host_ip", "")), int(port["target"])))
        else:
            host_ip, _, target = str(port).rsplit(":", 2)
            found.append((host_ip, int(target.split("/")[0])))
    return found


def test_the_gpu_host_agent_gets_only_nats_and_its_own_login(compose: dict[str, Any]) -> None:
    agent = services_of(compose)["agent"]
    env = agent["environment"]
    assert as_list(agent["command"])[:2] == ["gpuworker", "agent"]
    assert env["GPUWORKER_NATS_USER"] == "agent-host-1"
    assert env["GPUWORKER_NATS_PASSWORD"] == NATS_PASSWORDS[password_variable("agent-host-1")]
    # No database, no JWT secret, no master key: a compromised host cannot use what it was never
    # given. It holds its own host's key instead.
    never = {"DATABASE_URL", "PGPASSWORD", "GPUWORKER_JWT_SECRET", "GPUWORKER_SECRET_KEY"}
    assert not never & env.keys(), env.keys()
    assert env["GPUWORKER_HOST_KEY"] == SECRETS["GPUWORKER_HOST_1_KEY"]
    assert "postgres" not in agent.get("depends_on", {})


def test_dockerfile_installs_every_package_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(image == "python:3.11-slim" for image in froms), froms
    assert re.search(r"pip install[^\n]*\s\.\s*$", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    cmd = re.findall(r"^CMD\s+(.+)$", text, re.M)
    assert cmd and cmd[-1].strip() == '["gpuworker", "api", "--host", "0.0.0.0", "--port", "8080"]'
    # Everything the wheel is built from is copied in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = {
        Path(src).name
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M)
        for src in line.split()[:-1]
    }
    assert {*packages, "pyproject.toml", pyproject["project"]["readme"]} <= copied, copied


def test_nats_url_lists_are_split() -> None:
    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(ValueError):
        nats_servers(" , ")


@pytest.fixture
def loopback_cluster(compose: dict[str, Any], tmp_path: Path) -> Iterator[list[str]]:
    """The three node configs as compose ships them, moved onto loopback ports and a temp store."""
    nodes = nats_services(compose)
    client_ports = {name: free_port() for name in nodes}
    route_ports = {name: free_port() for name in nodes}
    processes = []
    shutil.copy(ROOT / "deploy/nats/auth.conf", tmp_path / "auth.conf")
    try:
        for name, svc in nodes.items():
            text = nats_config_file(svc).read_text()
            text = re.sub(
                r"^listen:.*$", f"listen: 127.0.0.1:{client_ports[name]}", text, flags=re.M
            )
            text = re.sub(r"^http:.*$", "", text, flags=re.M)
            text = re.sub(r"store_dir:.*", f'store_dir: "{tmp_path / name}"', text)
            text = re.sub(
                r"(cluster\s*\{[^}]*?)listen:[^\n]*",
                rf"\g<1>listen: 127.0.0.1:{route_ports[name]}",
                text,
            )
            for other in nodes:
                text = re.sub(
                    rf"nats-route://{other}:\d+",
                    f"nats-route://127.0.0.1:{route_ports[other]}",
                    text,
                )
            config = tmp_path / f"{name}.conf"
            config.write_text(text)
            processes.append(
                subprocess.Popen(
                    [nats_server_binary(), "-c", str(config)],
                    stdout=(tmp_path / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # As compose passes them: the nodes read the roles' passwords from here.
                    env={**os.environ, **NATS_PASSWORDS},
                )
            )
        for port in client_ports.values():
            wait_for_port("127.0.0.1", port, 10)
        yield [f"nats://127.0.0.1:{port}" for port in client_ports.values()]
    finally:
        for process in processes:
            os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


async def test_shipped_nats_configs_form_a_cluster_that_holds_an_r3_stream(
    loopback_cluster: list[str],
) -> None:
    login = NatsLogin(DECIDERS_USER, NATS_PASSWORDS[password_variable(DECIDERS_USER)])
    nc = await connect_nats(",".join(loopback_cluster), "compose-test", login)
    try:
        store = JetStreamEventStore(nc)
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the cluster elects its meta leader a few seconds after start
            try:
                await store.ensure_stream(replicas=3)
                break
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        info = None
        while asyncio.get_running_loop().time() < deadline:
            info = await js.stream_info("EVENTS")
            if info.cluster and info.cluster.leader and len(info.cluster.replicas or []) == 2:
                break
            await asyncio.sleep(0.5)
        assert info is not None and info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2, info.cluster
        ack = await js.publish("ev.compose.check.Checked", b"{}", stream="EVENTS")
        assert ack.seq >= 1
    finally:
        await nc.close()


async def test_shipped_nats_configs_refuse_strangers_and_hold_roles_to_their_subjects(
    loopback_cluster: list[str],
) -> None:
    errors: list[str] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        refused.set()

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            loopback_cluster[0], allow_reconnect=False, connect_timeout=5, error_cb=on_error
        )
    errors.clear()
    refused.clear()

    api = await nats.connect(
        loopback_cluster[0],
        user="api",
        password=NATS_PASSWORDS[password_variable("api")],
        inbox_prefix="_INBOX.api",
        error_cb=on_error,
    )
    try:
        await api.publish("ev.instance.x.InstanceStopped", b"{}")
        await api.flush()
        await asyncio.wait_for(refused.wait(), 10)
        assert any("permissions violation" in e.lower() and "ev.instance" in e for e in errors)
    finally:
        await api.close()
