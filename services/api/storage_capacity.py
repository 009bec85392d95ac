"""A host's disk is not promised past its size: network volumes and instance disks together stay
within what the host reported when it registered, times an overcommit ratio the operator sets
(GPUWORKER_STORAGE_OVERCOMMIT, default 1.0: none). 30 volumes of 4000 GB were once accepted on a
252 GB host.

A volume create picks its host under a lock per data center (`write_locks`), so two creates
cannot both take the last room on a host. An instance's host is chosen by placement among the
hosts with free GPUs; the api leaves out the hosts without room for the instance's own disks, a
check without a lock: concurrent creates may overshoot by what they ask together. A host that
did not report its disk (an engine this agent cannot see) is not checked."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from services.api.write_locks import WriteLocks
from services.deciders.host import HostState
from services.errors import Conflict

# What holds disk on a host: volumes that are not deleted (or failed), and every instance that is
# not terminated (a stopped instance keeps its disk), with its own volume unless it mounts a
# network volume instead. One row per holder: (host id, GiB).
_HOLDERS = """
SELECT doc->>'host_id' AS host_id, (doc->>'size_gb')::bigint AS gb
  FROM volumes WHERE NOT deleted AND doc->>'status' <> 'FAILED'
UNION ALL
SELECT doc->>'host_id', (doc->'container'->>'container_disk_in_gb')::bigint
         + CASE WHEN doc->>'network_volume_id' IS NULL
                THEN (doc->'container'->>'volume_in_gb')::bigint ELSE 0 END
  FROM instances WHERE NOT deleted
"""

_COMMITTED = sql.SQL(
    "SELECT host_id, coalesce(sum(gb), 0) FROM ({holders}) holders GROUP BY 1"
).format(holders=sql.SQL(_HOLDERS))

# `fits` in SQL, for every live host that reported its disk: the hosts without room.
_WITHOUT_ROOM = sql.SQL("""
SELECT h.id FROM hosts h LEFT JOIN ({committed}) AS c (host_id, gb) ON c.host_id = h.id
 WHERE NOT h.deleted AND jsonb_typeof(h.doc->'disk_gb') = 'number'
   AND coalesce(c.gb, 0) + %(need)s > (h.doc->>'disk_gb')::bigint * %(ratio)s
 ORDER BY h.id
""").format(committed=_COMMITTED)


@dataclass(frozen=True)
class StorageRules:
    overcommit: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StorageRules:
        rules = cls(overcommit=float(env.get("GPUWORKER_STORAGE_OVERCOMMIT", "1.0")))
        if rules.overcommit <= 0:
            raise ValueError("GPUWORKER_STORAGE_OVERCOMMIT must be more than 0")
        return rules


def fits(capacity_gb: int | None, committed_gb: int, more_gb: int, overcommit: float) -> bool:
    return capacity_gb is None or committed_gb + more_gb <= capacity_gb * overcommit


def free_gb(capacity_gb: int, committed_gb: int, overcommit: float) -> int:
    return max(0, int(capacity_gb * overcommit) - committed_gb)


async def committed_gb(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Host id -> GiB promised on it."""
    cur = await conn.execute(_COMMITTED)
    totals: dict[str, int] = {}
    for host_id, gb in await cur.fetchall():
        totals[host_id] = int(gb)
    return totals


class StorageGuard:
    def __init__(self, locks: WriteLocks, rules: StorageRules) -> None:
        self._locks = locks
        self.rules = rules

    @asynccontextmanager
    async def held(self, datacenter_id: str) -> AsyncIterator[Storage]:
        """The data center's storage lock, held until the block (choice, then write) ends."""
        async with self._locks.held(f"storage:{datacenter_id}") as conn:
            yield Storage(conn, self.rules)

    async def hosts_without_room(self, need_gb: int) -> list[str]:
        """The hosts that reported their disk and have no room for `need_gb` more. Worked out in
        PostgreSQL: an instance create must not decode every host of the fleet to learn it."""
        async with self._locks.unlocked() as conn:
            params = {"need": need_gb, "ratio": self.rules.overcommit}
            cur = await conn.execute(_WITHOUT_ROOM, params)
            return [str(host_id) for (host_id,) in await cur.fetchall()]


class Storage:
    def __init__(self, conn: psycopg.AsyncConnection[Any], rules: StorageRules) -> None:
        self._conn = conn
        self._rules = rules

    async def choose(
        self, hosts: list[HostState], size_gb: int, datacenter_id: str, spread: int
    ) -> HostState:
        """One of the hosts with room for `size_gb` more (`spread` picks which, stably)."""
        committed = await committed_gb(self._conn)
        ratio = self._rules.overcommit
        room = [h for h in hosts if fits(h.disk_gb, committed.get(h.id, 0), size_gb, ratio)]
        if not room:
            most = max(
                (free_gb(h.disk_gb, committed.get(h.id, 0), ratio) for h in hosts if h.disk_gb),
                default=0,
            )
            raise Conflict(
                f"not enough storage in {datacenter_id}: no host there has {size_gb} GB free"
                f" (the most free on one host is {most} GB); choose a smaller size or another"
                " data center"
            )
        return room[spread % len(room)]
