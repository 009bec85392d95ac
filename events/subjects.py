"""Subject names on NATS: one subject per aggregate for events, one per aggregate type for
commands.

Who sends a command is told by its subject, because NATS permissions bind subjects to credentials:
`cmd.<aggregate>` only the api may publish (users' commands), `cmd.agent.<host>.<aggregate>` only
that host's agent (its reports), `cmd.operator.<aggregate>` only operators' tools,
`cmd.billing.<aggregate>` only the ledger (spend control: stopping what a customer can no longer
pay for). A host id's
dots stay token separators in agent subjects, so a simulated fleet `sim` (hosts `sim.0000`, …)
is covered by one permission, `cmd.agent.sim.>`."""

import re
from typing import NamedTuple

STREAM = "EVENTS"
EVENTS_ROOT = "ev"
COMMANDS_ROOT = "cmd"
AGENT_CHANNEL = "agent"
OPERATOR_CHANNEL = "operator"
BILLING_CHANNEL = "billing"
HEARTBEATS_ROOT = "hb"
DECIDER_QUEUE = "deciders"

# Aggregate ids are [A-Za-z0-9_.-]; built-in ids such as "pytorch-cuda12-2.1" hold dots, which
# split NATS subject tokens, so a dot travels as "~" (never allowed in an id: the mapping is 1:1).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID = re.compile(ID_PATTERN)


def check_token(value: str) -> str:
    """The subject token for an aggregate id; refuses ids that could escape their subject
    ('*', '>', whitespace) and so break per-aggregate concurrency."""
    if not _ID.match(value):
        raise ValueError(f"not a valid aggregate id: {value!r}")
    return value.replace(".", "~")


def id_of_token(token: str) -> str:
    """The aggregate id a subject token stands for (`check_token` back)."""
    return token.replace("~", ".")


def event_subject(aggregate_type: str, aggregate_id: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.{check_token(aggregate_id)}.{event_type}"


def aggregate_filter(aggregate_type: str, aggregate_id: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.{check_token(aggregate_id)}.*"


def aggregate_type_filter(aggregate_type: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.>"


def command_subject(aggregate_type: str) -> str:
    return f"{COMMANDS_ROOT}.{aggregate_type}"


def check_host_id(host_id: str) -> str:
    """A host id usable as subject tokens: an aggregate id without empty dot-separated parts."""
    check_token(host_id)
    if any(not part for part in host_id.split(".")):
        raise ValueError(f"not a valid host id: {host_id!r}")
    return host_id


def agent_command_subject(host_id: str, aggregate_type: str) -> str:
    return f"{COMMANDS_ROOT}.{AGENT_CHANNEL}.{check_host_id(host_id)}.{aggregate_type}"


def operator_command_subject(aggregate_type: str) -> str:
    return f"{COMMANDS_ROOT}.{OPERATOR_CHANNEL}.{aggregate_type}"


def billing_command_subject(aggregate_type: str) -> str:
    return f"{COMMANDS_ROOT}.{BILLING_CHANNEL}.{aggregate_type}"


def heartbeat_subject(host_id: str) -> str:
    return f"{HEARTBEATS_ROOT}.{check_host_id(host_id)}"


def host_of_heartbeat(subject: str) -> str | None:
    """The host a heartbeat's subject speaks for, or None for a subject that is not one."""
    root, _, host_id = subject.partition(".")
    if root != HEARTBEATS_ROOT:
        return None
    try:
        return check_host_id(host_id)
    except ValueError:
        return None


class CommandChannel(NamedTuple):
    """Where a command came from, as its subject says: "api", "operator", "billing" or "agent"
    (with the host the agent speaks for), and the aggregate type (or service) it addresses."""

    sender: str
    aggregate_type: str
    host_id: str | None = None


def channel_of(subject: str) -> CommandChannel | None:
    tokens = subject.split(".")
    if len(tokens) < 2 or tokens[0] != COMMANDS_ROOT:
        return None
    if len(tokens) == 2 and tokens[1] not in (AGENT_CHANNEL, OPERATOR_CHANNEL, BILLING_CHANNEL):
        return CommandChannel("api", tokens[1])
    if len(tokens) == 3 and tokens[1] in (OPERATOR_CHANNEL, BILLING_CHANNEL):
        return CommandChannel(tokens[1], tokens[2])
    if len(tokens) >= 4 and tokens[1] == AGENT_CHANNEL:
        host_id = ".".join(tokens[2:-1])
        try:
            return CommandChannel("agent", tokens[-1], check_host_id(host_id))
        except ValueError:
            return None
    return None


# Each GPU host's work (services/processes/host_work_router.py): the latest state of every
# instance, volume and endpoint that has something on the host, one message per subject
# (`work.<host>.<aggregate type>.<id>`) in a stream of its own, so an agent reads its own work and
# nothing else (its NATS permissions name its host's filter), never the event stream.
WORK_STREAM = "WORK"
WORK_ROOT = "work"


def work_subject(host_id: str, aggregate_type: str, aggregate_id: str) -> str:
    return f"{WORK_ROOT}.{check_host_id(host_id)}.{aggregate_type}.{check_token(aggregate_id)}"


def parse_work_subject(subject: str) -> tuple[str, str, str]:
    """(host id, aggregate type, aggregate id) of a `work_subject`; host ids may hold dots."""
    tokens = subject.split(".")
    return ".".join(tokens[1:-2]), tokens[-2], id_of_token(tokens[-1])


def work_filter(host_id: str, fleet: bool = False) -> str:
    """One host's work; a fleet credential's (hosts `<host_id>.<n>`) covers every host under it."""
    return f"{WORK_ROOT}.{check_host_id(host_id)}.{'>' if fleet else '*.*'}"


def work_consumer(host_id: str) -> str:
    """The one consumer of the WORK stream a host's agent may make and read (its NATS permissions
    name it; a consumer name holds no dot)."""
    return f"work_{check_host_id(host_id).replace('.', '~')}"
