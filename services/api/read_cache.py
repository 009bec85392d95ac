"""Encoded list responses, kept per process and valid while their projection has not moved.

An entry is stamped with the projection's checkpoint read *before* its query, so any commit that
could change the rows makes the stamp old and the next read goes to PostgreSQL. Read-your-writes
holds in this process because a write answers only once the checkpoint has reached it. Between api
replicas a write is visible here once its NOTIFY arrives (milliseconds); while the watcher has lost
PostgreSQL the cache is bypassed, since stamps could no longer move."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from services.api.consistency import CheckpointWatcher

MAX_ENTRIES = 10_000


class ReadCache:
    def __init__(self, watcher: CheckpointWatcher, max_entries: int = MAX_ENTRIES) -> None:
        self._watcher = watcher
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[int, bytes]] = OrderedDict()
        self.hits = 0

    async def get_or_load(
        self, projection: str, key: str, load: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        if not self._watcher.connected:
            return await load()
        stamp = self._watcher.seen(projection)
        entry = self._entries.get((projection, key))
        if entry is not None and entry[0] == stamp:
            self.hits += 1
            self._entries.move_to_end((projection, key))
            return entry[1]
        body = await load()
        self._entries[(projection, key)] = (stamp, body)
        self._entries.move_to_end((projection, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return body
