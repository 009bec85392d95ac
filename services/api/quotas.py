"""Per-user quotas: GPUs held at once, network volumes (how many and how many GB), templates, API
keys.

One user could otherwise hold every GPU of the fleet or create resources without end. The limits
come from configuration (`Quotas.from_env`); a create over one is a 409 that names the quota and
its limit.

A check and the write it admits must not interleave with another of the same user's: two creates
that each see room for one more would both pass. So GPU, volume and API key checks and their writes
run under the user's lock (`write_locks`): one user's such writes run one at a time; different
users' run in parallel.

Templates cost us nothing to hold and are created in bursts (imports, benchmarks), so their quota
is checked without the lock: concurrent creates of one user may pass it by as many as are in
flight together, a bounded overshoot that is accepted."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from services.api.write_locks import WriteLocks
from services.deciders.instance import HOLDS_GPUS
from services.errors import Conflict

_GPU_STATUSES = sorted(HOLDS_GPUS)


@dataclass(frozen=True)
class Quotas:
    """Limits per user; 0 turns a quota off."""

    gpus: int = 8
    volumes: int = 10
    volume_gb: int = 10_000
    templates: int = 200
    api_keys: int = 50

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Quotas:
        default = cls()
        quotas = cls(
            gpus=int(env.get("GPUWORKER_QUOTA_GPUS", default.gpus)),
            volumes=int(env.get("GPUWORKER_QUOTA_VOLUMES", default.volumes)),
            volume_gb=int(env.get("GPUWORKER_QUOTA_VOLUME_GB", default.volume_gb)),
            templates=int(env.get("GPUWORKER_QUOTA_TEMPLATES", default.templates)),
            api_keys=int(env.get("GPUWORKER_QUOTA_API_KEYS", default.api_keys)),
        )
        if (
            min(quotas.gpus, quotas.volumes, quotas.volume_gb, quotas.templates, quotas.api_keys)
            < 0
        ):
            raise ValueError("GPUWORKER_QUOTA_* must be 0 (no limit) or more")
        return quotas


def _over(limit: int, used: int, more: int) -> bool:
    return limit > 0 and used + more > limit


class Usage:
    """What one user holds, read on the connection that holds their lock."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], user_id: str, quotas: Quotas) -> None:
        self._conn = conn
        self._user_id = user_id
        self._quotas = quotas

    async def _one(self, query: str) -> tuple[int, int]:
        cur = await self._conn.execute(query, {"owner": self._user_id, "held": _GPU_STATUSES})
        row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def check_gpus(self, more: int) -> None:
        limit = self._quotas.gpus
        if limit <= 0:
            return
        _count, held = await self._one(
            "SELECT count(*), coalesce(sum((doc->>'gpu_count')::int), 0) FROM instances"
            " WHERE owner_id = %(owner)s AND NOT deleted AND doc->>'status' = ANY(%(held)s)"
        )
        if _over(limit, held, more):
            raise Conflict(
                f"GPU quota: you hold {held} GPU{'s' if held != 1 else ''} and asked for {more}"
                f" more; the limit is {limit} GPUs held at once. Stop or terminate an instance"
                " first, or ask for a higher quota"
            )

    async def check_volumes(self, more_gb: int, new: bool) -> None:
        count, total_gb = await self._one(
            # A volume being deleted stops counting when the delete is accepted (202), not when
            # the host has finished wiping it: the customer has given it up.
            "SELECT count(*), coalesce(sum((doc->>'size_gb')::int), 0) FROM volumes"
            " WHERE owner_id = %(owner)s AND NOT deleted AND doc->>'status' <> 'DELETING'"
        )
        quotas = self._quotas
        if new and _over(quotas.volumes, count, 1):
            raise Conflict(
                f"volume quota: you have {count} network volumes; the limit is"
                f" {quotas.volumes} volumes. Delete one first, or ask for a higher quota"
            )
        if _over(quotas.volume_gb, total_gb, more_gb):
            raise Conflict(
                f"volume quota: your volumes hold {total_gb} GB and this asks for {more_gb} GB"
                f" more; the limit is {quotas.volume_gb} GB in all. Delete a volume first,"
                " or ask for a higher quota"
            )

    async def check_templates(self) -> None:
        limit = self._quotas.templates
        if limit <= 0:
            return
        count, _ = await self._one(
            "SELECT count(*), 0 FROM templates WHERE owner_id = %(owner)s AND NOT deleted"
        )
        if _over(limit, count, 1):
            raise Conflict(
                f"template quota: you have {count} templates; the limit is {limit} templates."
                " Delete one first, or ask for a higher quota"
            )

    async def check_api_keys(self, key_id: str) -> None:
        """Room for key `key_id`: a retry of its own create (the key made already) is not counted
        against itself."""
        limit = self._quotas.api_keys
        if limit <= 0:
            return
        cur = await self._conn.execute(
            "SELECT count(*) FROM api_keys WHERE owner_id = %s AND NOT deleted AND id <> %s",
            (self._user_id, key_id),
        )
        row = await cur.fetchone()
        count = int(row[0]) if row else 0
        if _over(limit, count, 1):
            raise Conflict(
                f"API key quota: you have {count} API keys; the limit is {limit} keys."
                " Revoke one first (`DELETE /api-keys/{id}`), or ask for a higher quota"
            )


class QuotaGuard:
    def __init__(self, locks: WriteLocks, quotas: Quotas) -> None:
        self._locks = locks
        self.quotas = quotas

    async def check_templates(self, user_id: str) -> None:
        async with self._locks.unlocked() as conn:
            await Usage(conn, user_id, self.quotas).check_templates()

    @asynccontextmanager
    async def held(self, user_id: str) -> AsyncIterator[Usage]:
        """The user's lock, held until the block (check, then write) ends."""
        async with self._locks.held(f"quota:{user_id}") as conn:
            yield Usage(conn, user_id, self.quotas)
