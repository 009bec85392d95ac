"""What every aggregate's decider provides, and the base of every command."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from events.envelope import Envelope

S = TypeVar("S")


class Command(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """`actor` is a user id or `system:<role>`; `at` is when the command was issued. Both travel in
    the command so that `decide` needs no clock and no session: it stays pure."""

    actor: str
    at: datetime


SYSTEM_PREFIX = "system:"
AGENT_ACTOR_PREFIX = "system:agent:"


def is_system(actor: str) -> bool:
    return actor.startswith(SYSTEM_PREFIX)


def agent_actor(host_id: str) -> str:
    """The actor of a host's agent; the deciders accept it only from that host's subjects."""
    return f"{AGENT_ACTOR_PREFIX}{host_id}"


def reports_for(actor: str, host_id: str | None) -> bool:
    """Whether `actor` may report facts about something on `host_id`: an agent only about its
    own host; the deciders' own processes (placement, host monitor, …) about any."""
    if actor.startswith(AGENT_ACTOR_PREFIX):
        return host_id is not None and actor == agent_actor(host_id)
    return is_system(actor)


@dataclass(frozen=True)
class Decider(Generic[S]):
    aggregate_type: str
    state_type: type[S]
    # A msgspec tagged union of this aggregate's Command subclasses.
    command_type: Any
    decide: Callable[[S | None, Any], list[msgspec.Struct]]
    evolve: Callable[[S | None, Envelope], S]

    def fold(self, state: S | None, events: Iterable[Envelope]) -> S | None:
        for event in events:
            state = self.evolve(state, event)
        return state
