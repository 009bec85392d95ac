"""What each role may publish and subscribe to on NATS, and the nats-server `authorization` block
that says so.

Least privilege per role, enforced by the server (a refused publish never reaches a subscriber):
only the deciders append to the event stream (`ev.>`); only the api sends users' commands
(`cmd.<aggregate>`); an agent sends only its own host's reports (`cmd.agent.<host>.<aggregate>`)
and heartbeats (`hb.<host>`); operators' tools send only operator commands. Everyone else reads the
stream through the few JetStream API subjects its code uses. Each user receives replies only on an
inbox of its own (`_INBOX.<user>.>`), so no credential can read another role's replies; the
deciders answer commands with `allow_responses` (only to the inbox a request names) instead of a
publish right on every inbox."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from events.subjects import (
    AGENT_CHANNEL,
    BILLING_CHANNEL,
    COMMANDS_ROOT,
    EVENTS_ROOT,
    HEARTBEATS_ROOT,
    OPERATOR_CHANNEL,
    STREAM,
    WORK_ROOT,
    WORK_STREAM,
    check_host_id,
    work_consumer,
    work_filter,
)
from services.container_logs import LOGS_ROOT
from services.processes.gpu_releaser import DURABLE as RELEASER_DURABLE
from services.worker_wire import WORKER_ROOT

API_USER = "api"
DECIDERS_USER = "deciders"
PROJECTOR_USER = "projector"
OPERATOR_USER = "operator"
LEDGER_USER = "ledger"
AUDIT_USER = "audit"
ROLE_USERS = (API_USER, DECIDERS_USER, PROJECTOR_USER, OPERATOR_USER, LEDGER_USER, AUDIT_USER)
AGENT_USER_PREFIX = "agent-"

_API = f"$JS.API.{{}}.{STREAM}"
STREAM_INFO = _API.format("STREAM.INFO")
STREAM_CREATE = _API.format("STREAM.CREATE")
DIRECT_GET = _API.format("DIRECT.GET")
_WORK_API = f"$JS.API.{{}}.{WORK_STREAM}"
# The deciders' side of each host's work (services/processes/host_work_router.py).
WORK_ROUTING = (
    f"{WORK_ROOT}.>",
    _WORK_API.format("STREAM.INFO"),
    _WORK_API.format("STREAM.CREATE"),
    _WORK_API.format("DIRECT.GET") + ".>",
)
# Ordered pulls (projections/ordered_pull.py): short-lived ack-less consumers, each named afresh by
# its reader (a name cannot be matched by prefix, so any name), read from a checkpoint.
ORDERED_PULL = (
    _API.format("CONSUMER.CREATE") + ".*",
    _API.format("CONSUMER.CREATE") + ".*.>",
    _API.format("CONSUMER.MSG.NEXT") + ".*",
    _API.format("CONSUMER.DELETE") + ".*",
)
# Ordered consumers (services/aggregate_follower.py): ephemeral push consumers with flow control.
FOLLOW = (
    _API.format("CONSUMER.CREATE"),
    _API.format("CONSUMER.INFO") + ".*",
    f"$JS.FC.{STREAM}.>",
)


def agent_user(host_id: str) -> str:
    return f"{AGENT_USER_PREFIX}{check_host_id(host_id)}"


def work_reading(host_id: str, fleet: bool) -> tuple[str, ...]:
    name = work_consumer(host_id)
    return (
        _WORK_API.format("STREAM.INFO"),
        _WORK_API.format("CONSUMER.CREATE") + f".{name}.{work_filter(host_id, fleet)}",
        _WORK_API.format("CONSUMER.DELETE") + f".{name}",
        _WORK_API.format("CONSUMER.MSG.NEXT") + f".{name}",
    )


def inbox_prefix(user: str) -> str:
    """The user's own reply inbox; a dot in a host id would split the token, so it becomes "~"
    (never in an id), and no user's inbox lies under another's."""
    return f"_INBOX.{user.replace('.', '~')}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


@dataclass(frozen=True)
class NatsUser:
    name: str
    # A literal password, or (password_env=True) the name of an environment variable that the
    # nats-server process resolves when it reads its configuration.
    password: str
    permissions: Permissions
    password_env: bool = False


def _durable(name: str) -> tuple[str, ...]:
    """A durable pull consumer of our own: create (either API form), inspect, fetch, ack."""
    return (
        _API.format("CONSUMER.CREATE") + f".{name}",
        _API.format("CONSUMER.CREATE") + f".{name}.>",
        _API.format("CONSUMER.DURABLE.CREATE") + f".{name}",
        _API.format("CONSUMER.INFO") + f".{name}",
        _API.format("CONSUMER.MSG.NEXT") + f".{name}",
        f"$JS.ACK.{STREAM}.{name}.>",
    )


def role_permissions(user: str) -> Permissions:
    inbox = (f"{inbox_prefix(user)}.>",)
    if user == API_USER:
        # Users' commands, and the stream's state for /health; asks hosts for container logs
        # and reads (acknowledging each chunk) the streams it asked for
        # (services/container_logs.py); the worker protocol's requests to the job dispatcher
        # (the api has checked the worker's token for the endpoint).
        return Permissions(
            publish=(f"{COMMANDS_ROOT}.*", STREAM_INFO, f"{LOGS_ROOT}.req.>", f"{WORKER_ROOT}.>"),
            subscribe=(*inbox, f"{LOGS_ROOT}.out.>"),
            allow_responses=True,
        )
    if user == DECIDERS_USER:
        return Permissions(
            publish=(
                f"{EVENTS_ROOT}.>",
                STREAM_INFO,
                STREAM_CREATE,
                DIRECT_GET,
                *FOLLOW,
                *_durable(RELEASER_DURABLE),
                *WORK_ROUTING,
            ),
            subscribe=(
                f"{COMMANDS_ROOT}.>",
                f"{HEARTBEATS_ROOT}.>",
                f"{WORKER_ROOT}.>",
                *inbox,
            ),
            allow_responses=True,
        )
    if user == PROJECTOR_USER:
        return Permissions(publish=(STREAM_INFO, *ORDERED_PULL), subscribe=inbox)
    if user == LEDGER_USER:
        # Reads the stream like the projector; stops what a customer can no longer pay for.
        return Permissions(
            publish=(f"{COMMANDS_ROOT}.{BILLING_CHANNEL}.*", STREAM_INFO, *ORDERED_PULL),
            subscribe=inbox,
        )
    if user == AUDIT_USER:
        # Reads every event from its checkpoint, and nothing else: it sends no command.
        return Permissions(publish=(STREAM_INFO, *ORDERED_PULL), subscribe=inbox)
    if user == OPERATOR_USER:
        # `projections rebuild` reads through short-lived consumers of its own naming, and
        # `blog publish` sends operator commands; operators may look at (not change) the stream
        # and drop a consumer for its owner to make again.
        return Permissions(
            publish=(
                f"{COMMANDS_ROOT}.{OPERATOR_CHANNEL}.*",
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",
                "$JS.API.STREAM.LIST",
                STREAM_INFO,
                _API.format("STREAM.MSG.GET"),
                _WORK_API.format("STREAM.INFO"),
                _WORK_API.format("STREAM.MSG.GET"),
                _API.format("CONSUMER.NAMES"),
                _API.format("CONSUMER.LIST"),
                *ORDERED_PULL,
                _API.format("CONSUMER.INFO") + ".*",
            ),
            subscribe=inbox,
        )
    raise ValueError(f"no such role: {user!r}")


def agent_permissions(host_id: str, fleet: bool = False) -> Permissions:
    """One host's agent: its reports and heartbeat, its own host's work (one consumer of its
    own name on the WORK stream, whose filter the server checks against the create subject;
    services/agent/host_work_feed.py) and never the event stream, and the log requests of its
    own host (answered, with its lines on that host's log streams). A fleet credential (one
    process simulating hosts `<host_id>.<n>`) covers every host id under its own."""
    check_host_id(host_id)
    own = "*" if not fleet else ">"
    heartbeats = (f"{HEARTBEATS_ROOT}.{host_id}",) + (
        (f"{HEARTBEATS_ROOT}.{host_id}.>",) if fleet else ()
    )
    log_requests = (f"{LOGS_ROOT}.req.{host_id}",) + (
        (f"{LOGS_ROOT}.req.{host_id}.>",) if fleet else ()
    )
    return Permissions(
        publish=(
            f"{COMMANDS_ROOT}.{AGENT_CHANNEL}.{host_id}.{own}",
            *heartbeats,
            *work_reading(host_id, fleet),
            f"{LOGS_ROOT}.out.{host_id}.{'*' if not fleet else '>'}",
        ),
        subscribe=(f"{inbox_prefix(agent_user(host_id))}.>", *log_requests),
        allow_responses=True,
    )


def _allow(kind: str, subjects: Iterable[str]) -> str:
    lines = "".join(f'            "{subject}"\n' for subject in subjects)
    return f"        {kind}: {{\n          allow: [\n{lines}          ]\n        }}\n"


def _user_entry(user: NatsUser) -> str:
    password = f"${user.password}" if user.password_env else f'"{user.password}"'
    perms = user.permissions
    responses = "        allow_responses: true\n" if perms.allow_responses else ""
    return (
        "    {\n"
        f'      user: "{user.name}"\n'
        f"      password: {password}\n"
        "      permissions: {\n"
        f"{_allow('publish', perms.publish)}"
        f"{_allow('subscribe', perms.subscribe)}"
        f"{responses}"
        "      }\n"
        "    }\n"
    )


def authorization_block(users: Iterable[NatsUser]) -> str:
    """nats-server configuration: every client must log in as one of `users`."""
    entries = "".join(_user_entry(u) for u in users)
    return f"authorization {{\n  users = [\n{entries}  ]\n}}\n"


def password_variable(user: str) -> str:
    """The environment variable that holds a role's password in compose.yaml."""
    token = "".join(c if c.isalnum() else "_" for c in user.upper())
    return f"GPUWORKER_NATS_{token}_PASSWORD"


def deployment_users(agents: Iterable[tuple[str, bool]] = ()) -> list[NatsUser]:
    """Every role and the given agents (host id, fleet), with passwords from the environment of
    the nats-server (compose.yaml passes them in)."""
    users = [
        NatsUser(u, password_variable(u), role_permissions(u), password_env=True)
        for u in ROLE_USERS
    ]
    for host_id, fleet in agents:
        name = agent_user(host_id)
        users.append(
            NatsUser(name, password_variable(name), agent_permissions(host_id, fleet), True)
        )
    return users
