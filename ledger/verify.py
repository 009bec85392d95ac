"""`gpuworker ledger verify`: the ledger's invariants, checked against its own tables and against a
replay of the event stream from sequence 1. Each problem is one line; none means the ledger holds.

- Money is conserved: every transfer moves a positive amount between two accounts, the balances
  table equals the postings, and all balances sum to zero.
- Every closed session is posted exactly: its postings add up to floor(price x quantity x its
  length rounded up once), and it is settled; every posting's session exists.
- A resource's sessions of one slot never overlap, and at most the last is open.
- Summary totals equal the postings: the hourly rollups add up, per customer, to what the postings
  say, the daily rollup to the hourly one, row by row, and the per-GPU-type one to the daily
  one (the export reads the postings themselves).
- A replay of the event stream from sequence 1 opens and closes exactly the sessions the ledger
  has, at the same instants and prices, and grants the same credits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from events.envelope import Envelope
from events.user import CreditGranted
from ledger.book import elapsed, owed
from ledger.pricing import price_of
from ledger.tracking import Tracked, fold_event
from ledger.usage import Closed, Opened, Session

_SESSION_COLUMNS = sql.SQL(
    "s.id, s.user_id, s.resource_type, s.resource_id, s.product, s.meter, s.slot, s.tier,"
    " s.gpu_type_id, s.quantity, s.unit_price_micros, s.per_seconds, s.rate_card_version,"
    " s.started_at"
)


def _session(row: tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        user_id=row[1],
        resource_type=row[2],
        resource_id=row[3],
        product=row[4],
        meter=row[5],
        slot=row[6],
        tier=row[7],
        gpu_type_id=row[8],
        quantity=row[9],
        unit_price_micros=row[10],
        per_seconds=row[11],
        rate_card_version=row[12],
        started_at=row[13],
    )


async def check_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    problems: list[str] = []
    cur = await conn.execute(
        "WITH moves AS ("
        "  SELECT debit AS account, -amount_micros AS delta FROM ledger_postings"
        "  UNION ALL SELECT credit, amount_micros FROM ledger_postings),"
        " recomputed AS (SELECT account, sum(delta) AS balance FROM moves GROUP BY account)"
        " SELECT COALESCE(r.account, b.account), r.balance, b.balance_micros"
        " FROM recomputed r FULL JOIN ledger_balances b ON b.account = r.account"
        " WHERE r.balance IS DISTINCT FROM b.balance_micros"
        " AND NOT (r.balance IS NULL AND b.balance_micros = 0)"
    )
    for account, recomputed, recorded in await cur.fetchall():
        problems.append(f"balance of {account} is {recorded}, its postings say {recomputed}")
    cur = await conn.execute("SELECT COALESCE(sum(balance_micros), 0) FROM ledger_balances")
    total = (await cur.fetchone() or (0,))[0]
    if total != 0:
        problems.append(f"balances sum to {total} micro-USD, not 0: money was made or lost")

    cur = await conn.execute(
        sql.SQL(
            "SELECT {}, e.ended_at, e.billed_seconds,"
            " COALESCE((SELECT sum(CASE WHEN p.kind = 'usage' THEN p.amount_micros"
            "   ELSE -p.amount_micros END) FROM ledger_postings p WHERE p.session_id = s.id), 0),"
            " (SELECT settled FROM ledger_progress g WHERE g.session_id = s.id)"
            " FROM ledger_sessions s JOIN ledger_session_ends e ON e.session_id = s.id"
        ).format(_SESSION_COLUMNS)
    )
    for row in await cur.fetchall():
        session = _session(row[:14])
        ended_at, billed, posted, settled = row[14:]
        seconds = elapsed(session, ended_at, round_up=True)
        if billed != seconds:
            problems.append(f"session {session.id}: billed {billed} s, it lasted {seconds} s")
        if posted != owed(session, seconds):
            problems.append(
                f"session {session.id}: posted {posted} micro-USD, owes"
                f" {owed(session, seconds)} for {seconds} s"
            )
        if not settled:
            problems.append(f"session {session.id} is closed but not settled")

    cur = await conn.execute(
        "SELECT p.id, p.session_id FROM ledger_postings p WHERE p.session_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM ledger_sessions s WHERE s.id = p.session_id)"
    )
    for posting_id, session_id in await cur.fetchall():
        problems.append(f"posting {posting_id} is for session {session_id}, which does not exist")

    cur = await conn.execute(
        "SELECT s.resource_id, s.slot, s.id, s.started_at, e.ended_at FROM ledger_sessions s"
        " LEFT JOIN ledger_session_ends e ON e.session_id = s.id"
        " ORDER BY s.resource_id, s.slot, s.started_at, e.ended_at NULLS LAST"
    )
    previous: tuple[str, str, str, datetime | None] | None = None
    for resource_id, slot, session_id, started_at, ended_at in await cur.fetchall():
        if previous is not None and previous[:2] == (resource_id, slot):
            _r, _s, earlier, earlier_end = previous
            if earlier_end is None or earlier_end > started_at:
                problems.append(
                    f"{resource_id} {slot}: session {session_id} starts before {earlier} ends"
                )
        previous = (resource_id, slot, session_id, ended_at)

    cur = await conn.execute(
        "WITH posted AS (SELECT user_id, sum(CASE WHEN kind = 'usage' THEN amount_micros"
        "   ELSE -amount_micros END) AS total FROM ledger_postings WHERE kind <> 'credit'"
        "   GROUP BY user_id),"
        " rolled AS (SELECT user_id, sum(amount_micros) AS total FROM ledger_hourly"
        "   GROUP BY user_id)"
        " SELECT COALESCE(p.user_id, r.user_id), p.total, r.total"
        " FROM posted p FULL JOIN rolled r ON r.user_id = p.user_id"
        " WHERE p.total IS DISTINCT FROM r.total"
    )
    for user_id, posted_total, rolled_total in await cur.fetchall():
        problems.append(
            f"customer {user_id}: summaries say {rolled_total}, postings say {posted_total}"
        )

    cur = await conn.execute(
        "WITH by_day AS (SELECT user_id, product, meter, resource_id, gpu_type_id,"
        "   date_trunc('day', hour, 'UTC') AS day, sum(amount_micros) AS amount,"
        "   sum(seconds) AS seconds, sum(gb_seconds) AS gb_seconds FROM ledger_hourly"
        "   GROUP BY 1, 2, 3, 4, 5, 6)"
        " SELECT COALESCE(h.user_id, d.user_id), COALESCE(h.resource_id, d.resource_id),"
        " COALESCE(h.meter, d.meter), COALESCE(h.day, d.day), h.amount, d.amount_micros"
        " FROM by_day h FULL JOIN ledger_daily d USING (user_id, product, meter, resource_id,"
        "   gpu_type_id, day)"
        " WHERE (h.amount, h.seconds, h.gb_seconds)"
        "   IS DISTINCT FROM (d.amount_micros, d.seconds, d.gb_seconds)"
    )
    for user_id, resource_id, meter, day, hourly, daily in await cur.fetchall():
        problems.append(
            f"customer {user_id}: the daily rollup of {meter} of {resource_id or '-'} on"
            f" {day:%Y-%m-%d} says {daily}, the hourly one {hourly}"
        )

    cur = await conn.execute(
        "WITH daily AS (SELECT user_id, product, day, sum(amount_micros) AS amount,"
        "   sum(CASE WHEN meter IN ('instance.gpu', 'serverless.worker') THEN seconds ELSE 0 END)"
        "   AS gpu_seconds, sum(gb_seconds) AS gb_seconds FROM ledger_daily GROUP BY 1, 2, 3),"
        " by_gpu AS (SELECT user_id, product, day, sum(amount_micros) AS amount,"
        "   sum(gpu_seconds) AS gpu_seconds, sum(gb_seconds) AS gb_seconds"
        "   FROM ledger_daily_gpu GROUP BY 1, 2, 3)"
        " SELECT COALESCE(d.user_id, g.user_id), COALESCE(d.product, g.product),"
        " COALESCE(d.day, g.day), d.amount, g.amount"
        " FROM daily d FULL JOIN by_gpu g USING (user_id, product, day)"
        " WHERE (d.amount, d.gpu_seconds, d.gb_seconds)"
        "   IS DISTINCT FROM (g.amount, g.gpu_seconds, g.gb_seconds)"
    )
    for user_id, product, day, daily, by_gpu in await cur.fetchall():
        problems.append(
            f"customer {user_id}: {product} on {day:%Y-%m-%d} by GPU type says {by_gpu},"
            f" the daily rollup {daily}"
        )
    return problems


class Replayed:
    """The sessions and credits the event stream implies, replayed from sequence 1."""

    def __init__(self) -> None:
        self.tracked: dict[tuple[str, str], Tracked] = {}
        self.sessions: dict[str, Session] = {}
        self.ends: dict[str, datetime] = {}
        self.credits: dict[str, int] = defaultdict(int)

    def apply(self, events: Iterable[Envelope]) -> None:
        for event in events:
            if isinstance(event.data, CreditGranted):
                self.credits[event.aggregate.id] += event.data.amount_micros
                continue
            for action in fold_event(self.tracked, event, price_of):
                if isinstance(action, Opened):
                    self.sessions[action.session.id] = action.session
                elif isinstance(action, Closed):
                    self.ends[action.session.id] = action.ended_at


async def check_replay(conn: psycopg.AsyncConnection[Any], replayed: Replayed) -> list[str]:
    problems: list[str] = []
    cur = await conn.execute(
        sql.SQL(
            "SELECT {}, e.ended_at FROM ledger_sessions s"
            " LEFT JOIN ledger_session_ends e ON e.session_id = s.id"
        ).format(_SESSION_COLUMNS)
    )
    recorded = {}
    for row in await cur.fetchall():
        recorded[row[0]] = (_session(row[:14]), row[14])
    for session_id, session in replayed.sessions.items():
        if session_id not in recorded:
            problems.append(
                f"replay opens session {session_id} ({session.meter} of"
                f" {session.resource_id}), the ledger has none"
            )
            continue
        have, ended_at = recorded.pop(session_id)
        if have != session:
            problems.append(f"session {session_id} differs from its replay: {have} != {session}")
        if ended_at != replayed.ends.get(session_id):
            problems.append(
                f"session {session_id} ends at {ended_at}, the replay says"
                f" {replayed.ends.get(session_id)}"
            )
    for session_id, (have, _ended) in recorded.items():
        problems.append(
            f"session {session_id} ({have.meter} of {have.resource_id}) is not in the replay"
        )
    cur = await conn.execute(
        "SELECT user_id, sum(amount_micros) FROM ledger_postings WHERE kind = 'credit'"
        " GROUP BY user_id"
    )
    credited = {user: int(total) for user, total in await cur.fetchall()}
    if credited != dict(replayed.credits):
        problems.append(
            f"credits posted {credited} differ from the replay {dict(replayed.credits)}"
        )
    return problems
