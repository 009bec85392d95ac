"""The audit log: every event of the stream as who did what to which resource, when and from where.

It is written by the audit role (`gpuworker audit`) with the projections' exactly-once mechanism
(`projections.runner`): each batch's rows and the audit checkpoint commit in one transaction, so a
restarted or redelivering audit role records every event once. The table is append-only in the
database itself (migration 0008).

Only the envelope is kept, never the payload: a registry credential's ciphertext, a template's env
values or a password hash never reach the log. For a customer's trail (`GET /audit`) each row also
names the owner of the resource it concerns, fixed by the resource's first event and kept in
`audit_owners` in the same transaction: a host's report about an instance belongs to the
instance's owner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from events.envelope import AggregateRef, Envelope
from services.deciders.decider import is_system

CHECKPOINT = "audit"
SUBJECTS = ("ev.>",)

_INSERT = (
    "INSERT INTO audit_log (sequence, event_id, occurred_at, recorded_at, actor, action,"
    " event_version, resource_type, resource_id, owner_id, correlation_id, causation_id,"
    " source_address) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    # A checkpoint reset (a replay from sequence 1) must not halt on rows already kept.
    " ON CONFLICT DO NOTHING"
)


def first_owner(event: Envelope) -> str | None:
    """The owner an aggregate's first event gives it: a user's account is their own; what a
    customer made is theirs (or the owner its payload names, as an endpoint's worker does); what
    the system made (hosts, public templates, blog posts) is no customer's."""
    if event.aggregate.type == "user":
        return event.aggregate.id
    named = getattr(event.data, "owner_id", None)
    if isinstance(named, str):
        return named
    return None if is_system(event.actor) else event.actor


async def _owners(
    conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]
) -> dict[AggregateRef, str | None]:
    """Every aggregate of `events` with its owner: those known before this batch from the table,
    the rest from their first event here (inserted in the caller's transaction)."""
    refs = list({e.aggregate for e in events})
    # One primary-key probe per aggregate (LATERAL; LIMIT keeps it from being flattened into a
    # join). As a plain join, a planner whose statistics lag behind this fast-growing table
    # chose to scan all of it for every batch.
    cur = await conn.execute(
        "SELECT r.t, r.i, o.owner_id FROM unnest(%b::text[], %b::text[]) AS r (t, i)"
        " CROSS JOIN LATERAL (SELECT owner_id FROM audit_owners"
        " WHERE resource_type = r.t AND resource_id = r.i LIMIT 1) AS o",
        ([r.type for r in refs], [r.id for r in refs]),
    )
    owners: dict[AggregateRef, str | None] = {
        AggregateRef(t, i): owner for t, i, owner in await cur.fetchall()
    }
    new: list[tuple[str, str, str | None]] = []
    for event in events:
        if event.aggregate not in owners:
            owner = owners[event.aggregate] = first_owner(event)
            new.append((event.aggregate.type, event.aggregate.id, owner))
    if new:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO audit_owners (resource_type, resource_id, owner_id)"
                " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                new,
            )
    return owners


async def record(conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
    """Inside the caller's transaction: one audit row per event."""
    owners = await _owners(conn, events)
    async with conn.cursor() as cur:
        await cur.executemany(
            _INSERT,
            [
                (
                    e.sequence,
                    e.id,
                    e.occurred_at,
                    e.recorded_at,
                    e.actor,
                    e.type,
                    e.version,
                    e.aggregate.type,
                    e.aggregate.id,
                    owners[e.aggregate],
                    e.correlation_id,
                    e.causation_id,
                    e.source,
                )
                for e in events
            ],
        )


class AuditProjection:
    """The audit log as the projection runner drives it: every event (`ev.>`), in stream order,
    exactly once, halted loudly on an event it cannot record."""

    name = CHECKPOINT
    filter_subjects = list(SUBJECTS)
    pipelined = True  # no COPY among its statements
    # Nobody waits on the trail by the millisecond. Under a serverless load (three events a job)
    # batches of a few events each cost the audit role and PostgreSQL 0.4 ms a job more than
    # batches gathered for 0.2 s (bench/jobs.py, the same run: 312 vs 383 jobs/s).
    linger_s = 0.2

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        await record(conn, events)
