"""A read model that is the fold of an aggregate's own `evolve`: one row per aggregate.

Reusing the decider's evolve means the read model and the decider can never disagree about what an
event means; the row's jsonb `doc` is the aggregate state, and the columns beside it are the few the
api filters by."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from events.envelope import Envelope
from events.subjects import aggregate_type_filter
from services.deciders.decider import Decider

_COLUMNS = ("id", "owner_id", "created_at", "deleted", "last_sequence", "doc")

# Called inside the batch's transaction once its rows are written: (connection, the batch's
# events, the states they made by id). For effects that must happen exactly once per event with
# the rows (a NOTIFY, an outbox row); a rebuild replays rows only, never these.
AfterApply = Callable[
    [psycopg.AsyncConnection[Any], Sequence[Envelope], dict[str, tuple[Any, int]]], Awaitable[None]
]


# A JSON string escape for NUL (U+0000) that is not itself an escaped backslash's text.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_text(document: str) -> str:
    """`document` as PostgreSQL's jsonb takes it: jsonb refuses U+0000, and one event holding
    it (an agent's report, an event written before the api refused it) would halt the
    projection for everyone. The read model shows U+FFFD there instead; the event keeps it."""
    if "\\u0000" not in document:
        return document
    return _NUL_ESCAPE.sub(r"\1\\ufffd", document)


@dataclass(frozen=True)
class AggregateTable:
    name: str
    decider: Decider[Any]
    owner_of: Callable[[Any], str | None]
    created_at_of: Callable[[Any], datetime]
    deleted_of: Callable[[Any], bool] = lambda _state: False
    after_apply: AfterApply | None = None
    # Its statements need no COPY: the projection runner may send them pipelined.
    pipelined: bool = True

    @property
    def filter_subject(self) -> str:
        return aggregate_type_filter(self.decider.aggregate_type)

    @property
    def filter_subjects(self) -> list[str]:
        return [self.filter_subject]

    def decode_state(self, doc: str | bytes) -> Any:
        return msgspec.json.decode(doc, type=self.decider.state_type)

    def row(self, state: Any, last_sequence: int) -> tuple[Any, ...]:
        aggregate_id = getattr(state, "id", None) or state.slug
        return (
            aggregate_id,
            self.owner_of(state),
            self.created_at_of(state),
            self.deleted_of(state),
            last_sequence,
            jsonb_text(msgspec.json.encode(state).decode()),
        )

    def fold(
        self, states: dict[str, tuple[Any, int]], events: Iterable[Envelope]
    ) -> dict[str, tuple[Any, int]]:
        """Apply events to (state, last_sequence) per aggregate id; returns the touched ones."""
        touched: dict[str, tuple[Any, int]] = {}
        evolve = self.decider.evolve
        for event in events:
            key = event.aggregate.id
            current = touched.get(key) or states.get(key)
            state = evolve(current[0] if current else None, event)
            touched[key] = (state, event.sequence)
        return touched

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        ids = sorted({e.aggregate.id for e in events})
        table = sql.Identifier(self.name)
        cur = await conn.execute(
            sql.SQL(
                "SELECT id, doc::text, last_sequence FROM {}"
                " WHERE id = ANY(%b) ORDER BY id FOR UPDATE"
            ).format(table),
            (ids,),
        )
        states = {row[0]: (self.decode_state(row[1]), row[2]) for row in await cur.fetchall()}
        touched = self.fold(states, events)
        upsert = sql.SQL(
            "INSERT INTO {} (id, owner_id, created_at, deleted, last_sequence, doc)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET owner_id = EXCLUDED.owner_id,"
            " created_at = EXCLUDED.created_at, deleted = EXCLUDED.deleted,"
            " last_sequence = EXCLUDED.last_sequence, doc = EXCLUDED.doc"
        ).format(table)
        async with conn.cursor() as cur2:
            await cur2.executemany(upsert, [self.row(s, seq) for s, seq in touched.values()])
        if self.after_apply is not None:
            await self.after_apply(conn, events, touched)

    async def copy_in(
        self, conn: psycopg.AsyncConnection[Any], states: dict[str, tuple[Any, int]]
    ) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(self.name), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
        )
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            for state, seq in states.values():
                await copy.write_row(self.row(state, seq))
