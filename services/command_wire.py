"""The command wire between the api and the decider runners (NATS request/reply, msgspec JSON)."""

from __future__ import annotations

from typing import Self

import msgspec

from events.ids import new_id
from services.errors import ErrorBody


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    # Fixes the ids of the events the command makes: the same id sent twice is applied once.
    id: str
    aggregate_id: str
    correlation_id: str
    # The aggregate's tagged Command, left raw so the runner decodes it with its own union.
    command: msgspec.Raw
    # Unix time after which the sender no longer waits: the command must not be applied later.
    deadline: float | None = None
    # The client's address, from the api only (the deciders drop it on every other channel); the
    # events the command makes carry it for the audit log.
    source: str | None = None

    @classmethod
    def wrap(
        cls,
        aggregate_id: str,
        command: msgspec.Struct,
        correlation_id: str,
        command_id: str | None = None,
        deadline: float | None = None,
        source: str | None = None,
    ) -> Self:
        return cls(
            id=command_id or new_id(),
            aggregate_id=aggregate_id,
            correlation_id=correlation_id,
            command=msgspec.Raw(msgspec.json.encode(command)),
            deadline=deadline,
            source=source,
        )


NULL = msgspec.Raw(b"null")


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Either the aggregate's state after the command and the stream sequence that holds it, or an
    error in the seed's shape."""

    sequence: int = 0
    # JSON null when the aggregate does not exist (msgspec cannot decode `Raw | None`).
    state: msgspec.Raw = NULL
    error: ErrorBody | None = None
