"""Docker fixtures shared by the tests that drive real containers.

Import them explicitly where needed:
`from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401`.
No Docker engine is a test failure, never a skip (the engine is part of what is tested)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from services.agent.runtime import LABEL_HOST

BUSYBOX_IMAGE = "local/busybox:latest"
BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "ls", "wget")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    problem = ""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        problem = str(exc)
    if problem:
        ci = " (CI=true: this is an error)" if os.environ.get("CI") == "true" else ""
        pytest.fail(
            f"no Docker engine reachable ({problem}){ci}: start one with "
            "`setsid dockerd --host unix:///var/run/docker.sock >/tmp/dockerd.log 2>&1 &`",
            pytrace=False,
        )
    yield client
    client.close()


def _busybox_rootfs_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.fail("busybox not found: `apt-get install busybox-static`", pytrace=False)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """`local/busybox:latest`, imported from the host's busybox if missing (no registry here)."""
    try:
        docker_client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        repository, _, tag = BUSYBOX_IMAGE.rpartition(":")
        docker_client.api.import_image_from_data(
            _busybox_rootfs_tar(), repository=repository, tag=tag
        )
        docker_client.images.get(BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


def build_image(client: docker.DockerClient, tag: str, *instructions: str) -> str:
    """`FROM local/busybox:latest` plus `instructions` (LABEL, VOLUME, …), built locally under
    `tag` (no registry involved: the base is already on this engine)."""
    dockerfile = "\n".join([f"FROM {BUSYBOX_IMAGE}", *instructions, ""])
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


def volume_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        return False
    return True


def clean_host(client: docker.DockerClient, host_id: str) -> None:
    """Every container, then every volume and tenant network, a test's host left on the engine."""
    label = {"label": f"{LABEL_HOST}={host_id}"}
    for container in client.containers.list(all=True, filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


PYTHON_REPOSITORY = "local/test-python"
_PYTHON_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages")


def _python_rootfs_tar(script: Path) -> bytes:
    """This machine's own Python interpreter (the one the project needs anyway: no registry can
    be reached for a Python image), its standard library and the shared libraries it loads, with
    busybox for `sh`, and `script` at /app/ws_echo.py."""
    # A venv's python is a link to the system's interpreter.
    interpreter = Path(os.path.realpath(sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    libraries = {Path(p) for p in re.findall(r"(/\S+\.so[.\d]*)", _ldd(interpreter))}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = stdlib / "lib-dynload"
    for module in dynload.glob("*.so"):
        libraries |= {Path(p) for p in re.findall(r"(/\S+\.so[.\d]*)", _ldd(module))}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        busybox = shutil.which("busybox") or "/bin/busybox"
        tar.add(busybox, arcname="bin/busybox")
        for applet in (*BUSYBOX_APPLETS, "env"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        tar.add(str(interpreter), arcname="usr/bin/python3")
        for library in sorted(libraries):
            tar.add(str(library.resolve()), arcname=str(library).lstrip("/"))

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = Path(info.name).parts
            return None if any(p in _PYTHON_SKIP for p in parts) else info

        tar.add(str(stdlib), arcname=f"usr/lib/{version}", filter=keep)
        tar.add(str(script), arcname="app/ws_echo.py")
    return buffer.getvalue()


def _ldd(path: Path) -> str:
    import subprocess

    return subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout


@pytest.fixture(scope="session")
def python_image(docker_client: docker.DockerClient) -> str:
    """`local/test-python:<script hash>`: a WebSocket echo server (tests/images/ws_echo.py) on
    the host's own Python; run it as `python3 /app/ws_echo.py PORT`. Imported once per engine
    (and again when the script changes)."""
    script = Path(__file__).parent / "images" / "ws_echo.py"
    tag = hashlib.sha256(script.read_bytes() + sys.version.encode()).hexdigest()[:12]
    image = f"{PYTHON_REPOSITORY}:{tag}"
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        docker_client.api.import_image_from_data(
            _python_rootfs_tar(script), repository=PYTHON_REPOSITORY, tag=tag
        )
        docker_client.images.get(image)
    return image
