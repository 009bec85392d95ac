"""Operator commands that talk to the servers directly: projection rebuilds, blog publishing,
credits."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from events.subjects import operator_command_subject
from ledger.consumer import CHECKPOINT as LEDGER_CHECKPOINT
from ledger.money import format_micros, usd_to_micros
from projections import checkpoints
from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.rebuild import rebuild
from services.api.command_bus import CommandBus
from services.api.spending import spending
from services.command_wire import Reply
from services.config import Settings
from services.deciders.blog import PublishPost
from services.deciders.decider import Command
from services.deciders.email_claim import normalise_email
from services.deciders.entitlements import OPERATOR_ACTOR
from services.deciders.user import GrantCredit
from services.errors import GpuWorkerError
from services.nats_connection import connect_role
from services.nats_permissions import OPERATOR_USER


async def rebuild_projections(settings: Settings, name: str | None) -> int:
    if name is not None and name not in PROJECTIONS:
        print(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}", file=sys.stderr)
        return 2
    await migrate(settings.database_url)
    nc = await connect_role(settings, OPERATOR_USER, "cli")
    try:
        for projection in [PROJECTIONS[name]] if name else PROJECTIONS.values():
            rows, seconds = await rebuild(settings.database_url, nc, projection)
            print(f"rebuilt {projection.name}: {rows} rows in {seconds:.2f}s")
    finally:
        await nc.close()
    return 0


async def send_operator_command(
    settings: Settings, aggregate_type: str, aggregate_id: str, command: Command, correlation: str
) -> Reply | None:
    """A command on the operators' channel, as the `operator` NATS user; None (the reason on
    standard error) when the deciders refuse it."""
    nc = await connect_role(settings, OPERATOR_USER, "cli")
    try:
        return await CommandBus(nc, settings.request_timeout_s).send_on(
            operator_command_subject(aggregate_type), aggregate_id, command, correlation
        )
    except GpuWorkerError as exc:
        print(f"gpuworker: {exc.message}", file=sys.stderr)
        return None
    finally:
        await nc.close()


async def publish_post(settings: Settings, slug: str, title: str, summary: str, body: str) -> int:
    post = PublishPost(
        actor=OPERATOR_ACTOR, at=datetime.now(UTC), title=title, summary=summary, body=body
    )
    reply = await send_operator_command(settings, "blog_post", slug, post, f"cli:blog:{slug}")
    if reply is None:
        return 1
    print(f"published {slug} (stream sequence {reply.sequence})")
    return 0


async def user_id_by_email(conn: psycopg.AsyncConnection[Any], email: str) -> str | None:
    """The account holding `email` in the users read model (oldest, as login finds it)."""
    cur = await conn.execute(
        "SELECT id FROM users WHERE doc->>'email' = %s ORDER BY created_at, id LIMIT 1",
        (normalise_email(email),),
    )
    row = await cur.fetchone()
    return str(row[0]) if row else None


def parse_usd(amount: str) -> int:
    """ "25", "12.50" or "$12.50" to micro-USD; ValueError naming what is wrong."""
    try:
        micros = usd_to_micros(Decimal(amount.strip().removeprefix("$")))
    except InvalidOperation:
        raise ValueError(f"AMOUNT {amount!r} is not a number of USD (e.g. 25 or 12.50)") from None
    except ValueError:
        raise ValueError(f"AMOUNT {amount!r}: at most 6 decimals (a micro-dollar)") from None
    if micros <= 0:
        raise ValueError(f"AMOUNT {amount!r} must be more than 0")
    return micros


async def _ledger_reached(
    conn: psycopg.AsyncConnection[Any], sequence: int, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await checkpoints.read(conn, LEDGER_CHECKPOINT) >= sequence:
            return True
        await asyncio.sleep(0.1)
    return False


async def grant_credit(
    settings: Settings, email: str, amount: str, reason: str, wait_s: float = 30.0
) -> int:
    """`gpuworker billing credit EMAIL AMOUNT --reason TEXT`: GrantCredit on the operator channel
    (as system:cli, from funding:operator); prints the balance once the ledger has posted it."""
    try:
        micros = parse_usd(amount)
    except ValueError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 2
    if not reason.strip():
        print("gpuworker: --reason must not be empty: finance reads it", file=sys.stderr)
        return 2
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        user_id = await user_id_by_email(conn, email)
        if user_id is None:
            print(f"gpuworker: no account with email {email!r}", file=sys.stderr)
            return 1
        grant = GrantCredit(
            actor=OPERATOR_ACTOR,
            at=datetime.now(UTC),
            amount_micros=micros,
            source="operator",
            reason=reason.strip(),
        )
        reply = await send_operator_command(
            settings, "user", user_id, grant, f"cli:credit:{user_id}"
        )
        if reply is None:
            return 1
        print(f"credited ${format_micros(micros)} to {email} ({user_id}): {reason.strip()}")
        if not await _ledger_reached(conn, reply.sequence, wait_s):
            print(
                f"the ledger has not posted it yet (stream sequence {reply.sequence}); is"
                " `gpuworker ledger` running? It will be posted when it runs.",
                file=sys.stderr,
            )
            return 0
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=1, open=False
    )
    await pool.open()
    try:
        spent = await spending(pool, user_id, datetime.now(UTC))
    finally:
        await pool.close()
    print(f"balance now ${format_micros(spent.balance_micros)}")
    return 0
