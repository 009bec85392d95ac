"""NATS refuses strangers and holds each role to its own subjects (issue 7, finding 4): a client
without a login is turned away, and a role's login cannot publish (or eavesdrop on) what that role
has no business with. Checked on the embedded server `gpuworker up` runs, with its own users."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from events.store import JetStreamEventStore
from events.subjects import STREAM, WORK_STREAM, work_consumer, work_filter, work_subject
from projections.ordered_pull import OrderedPull
from services.cli.embedded import EmbeddedNats, free_port
from services.nats_permissions import (
    API_USER,
    DECIDERS_USER,
    OPERATOR_USER,
    PROJECTOR_USER,
    agent_user,
)
from services.processes.host_work_router import ensure_work_stream
from tests.servers import connect_as, new_nats

ROOT = Path(__file__).resolve().parents[2]


class Heard:
    """Things heard (errors, subjects), and a way to wait until one of them is the one."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._added = asyncio.Event()

    def add(self, item: str) -> None:
        self.items.append(item)
        self._added.set()

    async def until(self, found: Callable[[str], bool], timeout: float = 5.0) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not any(found(item) for item in self.items):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), left)
            except TimeoutError:
                return False
        return True


class Login:
    """A client logged in as one user, with what the server said back about its requests."""

    def __init__(self) -> None:
        self.errors = Heard()
        self.client: NatsClient | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.add(str(exc).lower())

    @property
    def nc(self) -> NatsClient:
        assert self.client is not None
        return self.client

    async def refused(self, subject: str) -> bool:
        """Whether the server answered a permissions violation naming `subject`."""
        subject = subject.lower()  # nats-py reports the server's error in lower case
        return await self.errors.until(lambda e: "permissions violation" in e and subject in e)


class Listener:
    """The deciders' view of the bus: every command and heartbeat that gets through."""

    def __init__(self) -> None:
        self.heard = Heard()

    async def on_message(self, msg: Msg) -> None:
        self.heard.add(msg.subject)

    @property
    def seen(self) -> list[str]:
        return self.heard.items

    async def received(self, subject: str) -> bool:
        return await self.heard.until(lambda seen: seen == subject)


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[tuple[EmbeddedNats, Listener]]:
    listener = Listener()
    deciders = await connect_as(nats_server, DECIDERS_USER)
    await deciders.subscribe("cmd.>", cb=listener.on_message)
    await deciders.subscribe("hb.>", cb=listener.on_message)
    await deciders.flush()
    await JetStreamEventStore(deciders).ensure_stream()
    yield nats_server, listener
    await deciders.close()


async def login(server: EmbeddedNats, user: str) -> Login:
    watched = Login()
    watched.client = await connect_as(server, user, error_cb=watched.on_error)
    return watched


async def publish_is_refused(who: Login, listener: Listener, subject: str) -> bool:
    await who.nc.publish(subject, b"{}")
    await who.nc.flush()
    refused = await who.refused(subject)
    # A refused publish reaches nobody (checked after the refusal, so the message had its chance).
    return refused and subject not in listener.seen


async def publish_gets_through(who: Login, listener: Listener, subject: str) -> bool:
    await who.nc.publish(subject, b"{}")
    await who.nc.flush()
    return await listener.received(subject)


async def subscribe_is_refused(who: Login, subject: str) -> bool:
    await who.nc.subscribe(subject)
    await who.nc.flush()
    return await who.refused(subject)


async def stream_messages(server: EmbeddedNats) -> int:
    reader = await connect_as(server, OPERATOR_USER)
    try:
        info = await reader.jetstream().stream_info(STREAM)
        return int(info.state.messages)
    finally:
        await reader.close()


async def test_a_client_without_a_login_is_refused(nats_server: EmbeddedNats) -> None:
    async def quiet(_exc: Exception) -> None:
        return None

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            nats_server.url, allow_reconnect=False, connect_timeout=5, error_cb=quiet
        )
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            nats_server.url,
            user=API_USER,
            password="not-the-password",
            allow_reconnect=False,
            connect_timeout=5,
            error_cb=quiet,
        )


async def test_the_api_sends_users_commands_and_nothing_else(
    bus: tuple[EmbeddedNats, Listener],
) -> None:
    server, listener = bus
    api = await login(server, API_USER)
    try:
        assert await publish_gets_through(api, listener, "cmd.instance")
        before = await stream_messages(server)
        assert await publish_is_refused(api, listener, "ev.instance.i-1.InstanceStopped")
        assert await stream_messages(server) == before
        assert await publish_is_refused(api, listener, "cmd.agent.h1.instance")
        assert await publish_is_refused(api, listener, "hb.h1")
        assert await publish_is_refused(api, listener, "cmd.operator.blog_post")
        # Nor may it read others' commands or replies.
        assert await subscribe_is_refused(api, "cmd.>")
        assert await subscribe_is_refused(api, "_INBOX.>")
        assert await subscribe_is_refused(api, "_INBOX.deciders.>")
    finally:
        await api.nc.close()


async def test_an_agent_speaks_only_for_its_own_host(bus: tuple[EmbeddedNats, Listener]) -> None:
    server, listener = bus
    server.add_agent("h1")
    server.add_agent("h2")
    agent = await login(server, agent_user("h1"))
    try:
        assert await publish_gets_through(agent, listener, "cmd.agent.h1.instance")
        assert await publish_gets_through(agent, listener, "hb.h1")
        assert await publish_is_refused(agent, listener, "cmd.agent.h2.instance")
        assert await publish_is_refused(agent, listener, "hb.h2")
        # Not a fleet: host ids under its own are someone else's.
        assert await publish_is_refused(agent, listener, "cmd.agent.h1.0001.instance")
        assert await publish_is_refused(agent, listener, "hb.h1.0001")
        # No user commands, no operator commands, no appends.
        assert await publish_is_refused(agent, listener, "cmd.instance")
        assert await publish_is_refused(agent, listener, "cmd.operator.blog_post")
        before = await stream_messages(server)
        assert await publish_is_refused(agent, listener, "ev.instance.i-1.InstanceRunning")
        assert await stream_messages(server) == before
        assert await subscribe_is_refused(agent, "_INBOX.>")
        assert await subscribe_is_refused(agent, f"_INBOX.{agent_user('h2')}.>")
        assert await subscribe_is_refused(agent, "hb.>")
    finally:
        await agent.nc.close()


async def test_a_fleet_agent_covers_the_hosts_under_its_own(
    bus: tuple[EmbeddedNats, Listener],
) -> None:
    server, listener = bus
    server.add_agent("sim", fleet=True)
    fleet = await login(server, agent_user("sim"))
    try:
        assert await publish_gets_through(fleet, listener, "cmd.agent.sim.0001.instance")
        assert await publish_gets_through(fleet, listener, "hb.sim.0001")
        assert await publish_is_refused(fleet, listener, "cmd.agent.simx.instance")
        assert await publish_is_refused(fleet, listener, "hb.h1")
    finally:
        await fleet.nc.close()


async def test_only_the_deciders_append_events(bus: tuple[EmbeddedNats, Listener]) -> None:
    server, _listener = bus
    server.add_agent("h1")
    for user in (API_USER, PROJECTOR_USER, OPERATOR_USER, agent_user("h1")):
        who = await login(server, user)
        try:
            before = await stream_messages(server)
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await who.nc.jetstream().publish("ev.user.u-1.UserSignedUp", b"{}", timeout=1)
            assert await who.refused("ev.user.u-1.UserSignedUp"), (user, who.errors.items)
            assert await stream_messages(server) == before, user
        finally:
            await who.nc.close()
    deciders = await connect_as(server, DECIDERS_USER)
    try:
        ack = await deciders.jetstream().publish("ev.user.u-1.UserSignedUp", b"{}")
        assert ack.stream == STREAM
    finally:
        await deciders.close()


async def test_a_new_agent_user_works_on_the_running_server_at_once(tmp_path: Path) -> None:
    """`gpuworker nats add-agent` against `up`'s data folder, while its nats-server runs."""
    server = EmbeddedNats(tmp_path / "data" / "nats", free_port())
    server.start(tmp_path / "nats.log")
    try:

        async def quiet(_exc: Exception) -> None:
            return None

        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                server.url,
                user=agent_user("gpu-7"),
                password="guess",
                allow_reconnect=False,
                error_cb=quiet,
            )
        command = ["nats", "add-agent", "gpu-7", "--data-dir", str(tmp_path / "data")]
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("GPUWORKER_")},
        )
        assert result.returncode == 0, result.stderr
        printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        assert printed["GPUWORKER_NATS_USER"] == agent_user("gpu-7")
        assert oct(server.credentials_path.stat().st_mode & 0o777) == "0o600"
        agent = await nats.connect(
            server.url,
            user=printed["GPUWORKER_NATS_USER"],
            password=printed["GPUWORKER_NATS_PASSWORD"],
            inbox_prefix=f"_INBOX.{agent_user('gpu-7')}",
            allow_reconnect=False,
        )
        await agent.close()
    finally:
        server.stop()


def test_credentials_are_reused_across_restarts(tmp_path: Path) -> None:
    first = new_nats(tmp_path)
    try:
        login = first.login(API_USER)
    finally:
        first.stop()
    again = EmbeddedNats(first.store_dir, free_port())
    assert again.login(API_USER) == login
    assert len(login.password) >= 40


async def test_only_the_instances_host_answers_log_requests_and_only_the_api_asks(
    nats_server: EmbeddedNats,
) -> None:
    """Container logs travel over NATS (services/container_logs.py): the api asks on
    `logs.req.<host>` and reads `logs.out.>`; an agent hears only its own host's requests and
    writes only its own host's streams."""
    nats_server.add_agent("h1")
    nats_server.add_agent("h2")
    api = await login(nats_server, API_USER)
    agent = await login(nats_server, agent_user("h1"))
    listener = Listener()
    try:
        await api.nc.subscribe("logs.out.>", cb=listener.on_message)
        await agent.nc.subscribe("logs.req.h1", cb=listener.on_message)
        await api.nc.flush()
        await agent.nc.flush()
        assert await publish_gets_through(api, listener, "logs.req.h1")
        assert await publish_gets_through(agent, listener, "logs.out.h1.abc123")
        # Another host's requests and streams are not h1's to hear or write.
        assert await subscribe_is_refused(agent, "logs.req.h2")
        assert await subscribe_is_refused(agent, "logs.req.>")
        assert await subscribe_is_refused(agent, "logs.out.>")
        assert await publish_is_refused(agent, listener, "logs.out.h2.abc123")
        # Nobody but the api asks (not even for the agent's own host).
        assert await publish_is_refused(agent, listener, "logs.req.h1.0001")
        assert await publish_is_refused(agent, listener, "logs.req.h2")
        projector = await login(nats_server, PROJECTOR_USER)
        try:
            assert await publish_is_refused(projector, listener, "logs.req.h2")
            assert await subscribe_is_refused(projector, "logs.out.>")
        finally:
            await projector.nc.close()
    finally:
        await api.nc.close()
        await agent.nc.close()


async def test_an_agent_reads_its_own_work_and_never_the_event_stream(
    bus: tuple[EmbeddedNats, Listener],
) -> None:
    """Issue 14, item 3: a compromised host reads no other host's work and no customer's events
    (services/processes/host_work_router.py)."""
    server, _listener = bus
    deciders = await connect_as(server, DECIDERS_USER)
    try:
        await ensure_work_stream(deciders)
        js = deciders.jetstream()
        await js.publish(work_subject("h1", "instance", "i-1"), b"mine", stream=WORK_STREAM)
        await js.publish(work_subject("h2", "instance", "i-2"), b"theirs", stream=WORK_STREAM)
        await js.publish("ev.user.u-1.UserSignedUp", b"{}")
    finally:
        await deciders.close()
    server.add_agent("h1")
    server.add_agent("h2")
    agent = await login(server, agent_user("h1"))
    try:
        pull = OrderedPull(
            agent.nc,
            [work_filter("h1")],
            1,
            stream=WORK_STREAM,
            name=work_consumer("h1"),
            last_per_subject=True,
        )
        await pull.open()
        assert [m.data for m in await pull.next(5.0)] == [b"mine"]
        await pull.close()
        js = agent.nc.jetstream(timeout=1)
        # Another host's work: not under its own consumer's name, nor under the other host's.
        for name, subjects in (
            (work_consumer("h1"), work_filter("h2")),
            (work_consumer("h1"), "work.>"),
            (work_consumer("h2"), work_filter("h2")),
        ):
            config = ConsumerConfig(name=name, filter_subject=subjects, ack_policy=AckPolicy.NONE)
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_consumer(WORK_STREAM, config)
            assert await agent.refused(f"$JS.API.CONSUMER.CREATE.{WORK_STREAM}.{name}.{subjects}")
        # The event stream: neither read by subject nor followed.
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_last_msg(STREAM, "ev.user.u-1.UserSignedUp", direct=True)
        assert await agent.refused(f"$JS.API.DIRECT.GET.{STREAM}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(STREAM, ConsumerConfig(ack_policy=AckPolicy.NONE))
        assert await agent.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(STREAM)
        assert await agent.refused(f"$JS.API.STREAM.INFO.{STREAM}")
    finally:
        await agent.nc.close()
