"""Spend control: when a customer's balance is used up or this month's budget is spent, what runs
on their account is stopped (not terminated: their data stays), their serverless endpoints are
held at zero workers (and let go again once they can pay), and creates and new jobs answer 402.

`verdict` is the rule, pure; `over_limit` reads what it needs from the ledger's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from ledger.money import format_micros


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    # balance | budget
    limit: str
    message: str


def verdict(
    user_id: str, balance_micros: int, month_spent_micros: int, budget_micros: int | None
) -> Verdict | None:
    if balance_micros <= 0:
        return Verdict(
            user_id=user_id,
            limit="balance",
            message=f"your balance is used up (${format_micros(balance_micros)}):"
            " add credit, then start it again",
        )
    if budget_micros is not None and month_spent_micros >= budget_micros:
        return Verdict(
            user_id=user_id,
            limit="budget",
            message=f"this month's budget of ${format_micros(budget_micros)} is spent"
            f" (${format_micros(month_spent_micros)}): raise it with PATCH /me, then start it"
            " again",
        )
    return None


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def account(
    conn: psycopg.AsyncConnection[Any], user_id: str, now: datetime
) -> tuple[int, int]:
    """(balance, spent this month) in micro-USD, as posted so far."""
    cur = await conn.execute(
        "SELECT COALESCE((SELECT balance_micros FROM ledger_balances WHERE account = %s), 0),"
        " COALESCE((SELECT sum(amount_micros) FROM ledger_daily"
        "  WHERE user_id = %s AND day >= %s), 0)",
        (f"customer:{user_id}", user_id, month_start(now)),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def over_limit(conn: psycopg.AsyncConnection[Any], now: datetime) -> list[Verdict]:
    """Every customer with something billed running who is past a limit."""
    cur = await conn.execute(
        "SELECT o.user_id, COALESCE(b.balance_micros, 0), COALESCE(m.spent, 0),"
        " (u.doc->>'monthly_budget_micros')::bigint"
        " FROM (SELECT DISTINCT user_id FROM ledger_progress WHERE NOT settled) o"
        " LEFT JOIN ledger_balances b ON b.account = 'customer:' || o.user_id"
        # Each customer's own month, by index: not every customer's month, every cycle.
        " LEFT JOIN LATERAL (SELECT sum(amount_micros) AS spent FROM ledger_daily d"
        "   WHERE d.user_id = o.user_id AND d.day >= %s) m ON true"
        " LEFT JOIN users u ON u.id = o.user_id",
        (month_start(now),),
    )
    found = []
    for user_id, balance, spent, budget in await cur.fetchall():
        result = verdict(user_id, int(balance), int(spent), None if budget is None else int(budget))
        if result is not None:
            found.append(result)
    return found


async def running_instances(conn: psycopg.AsyncConnection[Any], user_id: str) -> list[str]:
    cur = await conn.execute(
        "SELECT resource_id FROM ledger_tracked WHERE resource_type = 'instance'"
        " AND user_id = %s AND (doc->>'running')::boolean AND NOT (doc->>'ended')::boolean"
        " ORDER BY resource_id",
        (user_id,),
    )
    return [row[0] for row in await cur.fetchall()]


async def endpoints_to_hold(conn: psycopg.AsyncConnection[Any], user_id: str) -> list[str]:
    """The customer's endpoints that are not held at zero yet."""
    cur = await conn.execute(
        "SELECT id FROM endpoints WHERE owner_id = %s AND NOT deleted"
        " AND doc->>'suspended' IS NULL ORDER BY id",
        (user_id,),
    )
    return [row[0] for row in await cur.fetchall()]


async def held_endpoints(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(endpoint, owner) of every endpoint held at zero workers."""
    cur = await conn.execute(
        "SELECT id, owner_id FROM endpoints WHERE NOT deleted"
        " AND doc->>'suspended' IS NOT NULL ORDER BY id"
    )
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def limit_reached(
    conn: psycopg.AsyncConnection[Any], user_id: str, now: datetime
) -> Verdict | None:
    """The customer's verdict now, whether or not anything of theirs runs."""
    balance, spent = await account(conn, user_id, now)
    cur = await conn.execute(
        "SELECT (doc->>'monthly_budget_micros')::bigint FROM users WHERE id = %s", (user_id,)
    )
    row = await cur.fetchone()
    budget = None if row is None or row[0] is None else int(row[0])
    return verdict(user_id, balance, spent, budget)
