"""Subject names on NATS: one subject per aggregate for events, one per aggregate type for
commands."""

import re

STREAM = "EVENTS"
EVENTS_ROOT = "ev"
COMMANDS_ROOT = "cmd"
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


def event_subject(aggregate_type: str, aggregate_id: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.{check_token(aggregate_id)}.{event_type}"


def aggregate_filter(aggregate_type: str, aggregate_id: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.{check_token(aggregate_id)}.*"


def aggregate_type_filter(aggregate_type: str) -> str:
    return f"{EVENTS_ROOT}.{aggregate_type}.>"


def command_subject(aggregate_type: str) -> str:
    return f"{COMMANDS_ROOT}.{aggregate_type}"
