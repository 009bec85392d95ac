"""What a customer spends, read from the ledger: balance, spend per hour now, this month's spend,
cost to date per resource; and the check that refuses a create the customer cannot afford (402).

The ledger charges open sessions at least every minute; between charges the money a running
session owes is counted here too (owed for its seconds so far, less what was posted), so a
balance and a cost to date are right to the second, not to the last accrual."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from ledger.book import Progress, unposted
from ledger.money import SECONDS_PER_HOUR, format_micros
from ledger.pricing import price_of
from ledger.spend_control import month_start
from ledger.usage import Usage
from services.deciders.user import DEFAULT_SPEND_LIMIT_PER_HOUR_MICROS
from services.errors import PaymentRequired

_progress = msgspec.json.Decoder(Progress)
# No hourly limit is this high (PostgreSQL's bigint).
MAX_MICROS = 2**63 - 1


class Spending(msgspec.Struct, frozen=True, kw_only=True):
    balance_micros: int
    per_hour_micros: int
    month_micros: int


def hourly_cost(usages: Iterable[Usage], at: datetime) -> int:
    """micro-USD per hour of what `usages` would cost, priced as the ledger would price them."""
    total = 0
    for usage in usages:
        if usage.quantity <= 0:
            continue
        price = price_of(usage, at)
        total += price.unit_price_micros * usage.quantity * SECONDS_PER_HOUR // price.per_seconds
    return total


async def spending(pool: AsyncConnectionPool[Any], user_id: str, now: datetime) -> Spending:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT COALESCE((SELECT balance_micros FROM ledger_balances WHERE account = %s), 0),"
            " COALESCE((SELECT sum(amount_micros) FROM ledger_daily"
            "  WHERE user_id = %s AND day >= %s), 0)",
            (f"customer:{user_id}", user_id, month_start(now)),
        )
        row = await cur.fetchone()
        cur = await conn.execute(
            "SELECT doc::text, rate_per_hour_micros FROM ledger_progress"
            " WHERE user_id = %s AND NOT settled",
            (user_id,),
        )
        open_rows = await cur.fetchall()
    assert row is not None
    pending = sum(unposted(_progress.decode(doc), now) for doc, _rate in open_rows)
    return Spending(
        balance_micros=int(row[0]) - pending,
        per_hour_micros=sum(int(rate) for _doc, rate in open_rows),
        month_micros=int(row[1]) + pending,
    )


async def costs_to_date(
    pool: AsyncConnectionPool[Any], resource_ids: list[str], now: datetime
) -> dict[str, int]:
    """Each resource's cost so far (posted, and owed by its open sessions)."""
    if not resource_ids:
        return {}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT resource_id, sum(CASE WHEN kind = 'usage' THEN amount_micros"
            " ELSE -amount_micros END) FROM ledger_postings WHERE resource_id = ANY(%b)"
            " GROUP BY resource_id",
            (resource_ids,),
        )
        costs = {rid: int(total) for rid, total in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT resource_id, doc::text FROM ledger_progress"
            " WHERE resource_id = ANY(%b) AND NOT settled",
            (resource_ids,),
        )
        for rid, doc in await cur.fetchall():
            costs[rid] = costs.get(rid, 0) + unposted(_progress.decode(doc), now)
    return costs


def check_affordable(
    spent: Spending,
    added_per_hour_micros: int,
    limit_per_hour_micros: int,
    monthly_budget_micros: int | None,
) -> None:
    """Raise 402 naming what stops the create: the balance, the budget, or the hourly limit."""
    if spent.balance_micros <= 0:
        raise PaymentRequired(
            f"your balance is ${format_micros(spent.balance_micros)}: add credit before creating"
            " anything that costs money"
        )
    if monthly_budget_micros is not None and spent.month_micros >= monthly_budget_micros:
        raise PaymentRequired(
            f"this month's budget of ${format_micros(monthly_budget_micros)} is spent"
            f" (${format_micros(spent.month_micros)}); raise `monthlyBudget` with PATCH /me"
        )
    after = spent.per_hour_micros + added_per_hour_micros
    if after > limit_per_hour_micros:
        raise PaymentRequired(
            f"this would bring your spend to ${format_micros(after)}/h, over your limit of"
            f" ${format_micros(limit_per_hour_micros)}/h; raise `spendLimitPerHour` with PATCH /me"
        )


async def ensure_affordable(
    pool: AsyncConnectionPool[Any],
    user_id: str,
    added_per_hour_micros: int,
    hourly_limit: bool = True,
) -> None:
    """402 unless the customer's balance, budget and hourly limit allow `added_per_hour_micros`
    more. Without `hourly_limit`, only the balance and the budget are checked (a serverless job or
    endpoint adds no known spend per hour: its workers are what cost, and billing holds them)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (doc->>'spend_limit_per_hour_micros')::bigint,"
            " (doc->>'monthly_budget_micros')::bigint FROM users WHERE id = %s",
            (user_id,),
        )
        row = await cur.fetchone()
    limit, budget = row if row is not None else (DEFAULT_SPEND_LIMIT_PER_HOUR_MICROS, None)
    spent = await spending(pool, user_id, datetime.now(UTC))
    if not hourly_limit:
        limit = MAX_MICROS
    check_affordable(
        spent,
        added_per_hour_micros,
        DEFAULT_SPEND_LIMIT_PER_HOUR_MICROS if limit is None else int(limit),
        None if budget is None else int(budget),
    )
