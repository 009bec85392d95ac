"""Queries against the projections' tables; each returns decoded aggregate states."""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from events.subjects import ID_PATTERN
from projections.aggregate_table import AggregateTable
from services.api.pagination import PageQuery, Position
from services.errors import NotFound

_ID = re.compile(ID_PATTERN)


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def checked_id(value: str, what: str) -> str:
    """A path id that cannot name any aggregate is simply not found (never a subject error)."""
    if not valid_id(value):
        raise NotFound(f"{what} not found")
    return value


async def get(
    pool: AsyncConnectionPool[Any], table: AggregateTable, aggregate_id: str
) -> Any | None:
    """The aggregate's state, deleted or not; None if it never existed."""
    if not valid_id(aggregate_id):
        return None
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT doc::text FROM {} WHERE id = %s").format(sql.Identifier(table.name)),
            (aggregate_id,),
        )
        row = await cur.fetchone()
    return table.decode_state(row[0]) if row else None


async def get_many(
    pool: AsyncConnectionPool[Any], table: AggregateTable, ids: list[str]
) -> dict[str, Any]:
    if not ids:
        return {}
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT id, doc::text FROM {} WHERE id = ANY(%b)").format(
                sql.Identifier(table.name)
            ),
            (ids,),
        )
        rows = await cur.fetchall()
    return {row[0]: table.decode_state(row[1]) for row in rows}


def _visible_to(
    owner_id: str | None, include_public: bool
) -> tuple[sql.Composable, tuple[str, ...]]:
    if owner_id is None:
        return sql.SQL("owner_id IS NULL"), ()
    if include_public:
        return sql.SQL("(owner_id = %s OR owner_id IS NULL)"), (owner_id,)
    return sql.SQL("owner_id = %s"), (owner_id,)


async def list_visible(
    pool: AsyncConnectionPool[Any],
    table: AggregateTable,
    owner_id: str | None,
    include_public: bool = False,
) -> list[Any]:
    """Live rows owned by `owner_id` (and public ones, owner NULL, if asked), oldest first.
    `owner_id=None` lists only the public ones."""
    where, params = _visible_to(owner_id, include_public)
    query = sql.SQL(
        "SELECT doc::text FROM {} WHERE {} AND NOT deleted ORDER BY created_at, id"
    ).format(sql.Identifier(table.name), where)
    async with pool.connection() as conn:
        cur = await conn.execute(query, params)
        rows = await cur.fetchall()
    return [table.decode_state(r[0]) for r in rows]


async def list_page(
    pool: AsyncConnectionPool[Any],
    table: AggregateTable,
    owner_id: str | None,
    page: PageQuery,
    include_public: bool = False,
    newest_first: bool = False,
) -> tuple[list[Position], list[Any]]:
    """One page of `list_visible`'s rows (oldest first unless `newest_first`) after the page's
    cursor, with their positions: up to limit + 1 rows, the last only telling that more follow."""
    where, params = _visible_to(owner_id, include_public)
    after = page.after()
    direction = sql.SQL("DESC" if newest_first else "ASC")
    keyset: sql.Composable = sql.SQL("")
    values: tuple[Any, ...] = params
    if after is not None:
        keyset = sql.SQL(" AND (created_at, id) {} (%s, %s)").format(
            sql.SQL("<" if newest_first else ">")
        )
        values = (*params, after.created_at, after.id)
    query = sql.SQL(
        "SELECT created_at, id, doc::text FROM {} WHERE {} AND NOT deleted{}"
        " ORDER BY created_at {}, id {} LIMIT %s"
    ).format(sql.Identifier(table.name), where, keyset, direction, direction)
    async with pool.connection() as conn:
        cur = await conn.execute(query, (*values, page.limit + 1))
        rows = await cur.fetchall()
    return (
        [Position(created_at=r[0], id=r[1]) for r in rows],
        [table.decode_state(r[2]) for r in rows],
    )


async def _first_with(
    pool: AsyncConnectionPool[Any], table: AggregateTable, field: str, value: str, live: bool
) -> Any | None:
    """The oldest row whose state's `field` is `value` (only live ones if `live`), or None."""
    query = sql.SQL(
        "SELECT doc::text FROM {} WHERE doc->>{} = %s{} ORDER BY created_at, id LIMIT 1"
    ).format(
        sql.Identifier(table.name),
        sql.Literal(field),
        sql.SQL(" AND NOT deleted" if live else ""),
    )
    async with pool.connection() as conn:
        cur = await conn.execute(query, (value,))
        row = await cur.fetchone()
    return table.decode_state(row[0]) if row else None


async def user_with_email(pool: AsyncConnectionPool[Any], table: AggregateTable, email: str) -> Any:
    """The account holding `email` (normalised), oldest first if ever more than one; or None."""
    return await _first_with(pool, table, "email", email, live=False)


async def live_with_hash(
    pool: AsyncConnectionPool[Any], table: AggregateTable, key_hash: str
) -> Any | None:
    """The live (not revoked) API key whose stored hash is `key_hash`, or None."""
    return await _first_with(pool, table, "key_hash", key_hash, live=True)
