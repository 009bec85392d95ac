"""Who an API key speaks for: its hash looked up in the `api_keys` read model, with a small cache
per api process, since a script presents the same key on every request.

A revoked key must stop working within a second on every replica. A cache entry is therefore
valid only while the `api_keys` projection's checkpoint has not moved since the entry was read
(stamped before its query, as the read cache does), and for at most MAX_AGE_S: the checkpoint moves
on every api replica a few milliseconds after any key is created or revoked (LISTEN/NOTIFY), and
the age bound still holds should a replica's LISTEN connection die without its noticing. While
the watcher has lost PostgreSQL, every lookup goes to the database.

Only keys that work are kept: an unknown or revoked key is looked up each time, so a key just
created elsewhere is never refused from memory, and guessing costs the cache nothing."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.consistency import CheckpointWatcher
from services.deciders.api_key import ApiKeyState
from services.security.api_keys import ApiKeyHasher, well_formed

API_KEYS = PROJECTIONS["api_keys"]
MAX_AGE_S = 1.0
MAX_ENTRIES = 10_000


class KeyHolder(msgspec.Struct, frozen=True):
    """What a request authenticated by an API key carries as `request.auth`."""

    key_id: str
    user_id: str


class ApiKeyLookup:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        watcher: CheckpointWatcher,
        hasher: ApiKeyHasher,
        max_age_s: float = MAX_AGE_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._watcher = watcher
        self.hasher = hasher
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._clock = clock
        # key hash -> (checkpoint stamp, when read, holder)
        self._entries: OrderedDict[str, tuple[int, float, KeyHolder]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def holder_of(self, key: str) -> KeyHolder | None:
        """The key's holder, or None for a key that is malformed, revoked or was never issued."""
        if not well_formed(key):
            return None
        digest = self.hasher.digest(key)
        cached = self._watcher.connected
        stamp = self._watcher.seen(API_KEYS.name)
        now = self._clock()
        entry = self._entries.get(digest)
        if cached and entry is not None and entry[0] == stamp and now - entry[1] < self._max_age_s:
            self.hits += 1
            self._entries.move_to_end(digest)
            return entry[2]
        state: ApiKeyState | None = await read_models.live_with_hash(self._pool, API_KEYS, digest)
        if state is None:
            self._entries.pop(digest, None)
            return None
        holder = KeyHolder(key_id=state.id, user_id=state.owner_id)
        if cached:
            self._entries[digest] = (stamp, now, holder)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return holder
