"""The command wire between the api and the decider runners (NATS request/reply, msgspec JSON)."""

from __future__ import annotations

import msgspec

from services.errors import ErrorBody


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    aggregate_id: str
    correlation_id: str
    # The aggregate's tagged Command, left raw so the runner decodes it with its own union.
    command: msgspec.Raw


NULL = msgspec.Raw(b"null")


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Either the aggregate's state after the command and the stream sequence that holds it, or an
    error in the seed's shape."""

    sequence: int = 0
    # JSON null when the aggregate does not exist (msgspec cannot decode `Raw | None`).
    state: msgspec.Raw = NULL
    error: ErrorBody | None = None
