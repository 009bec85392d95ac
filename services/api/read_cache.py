"""Encoded list responses, kept per process and valid while their projection has not moved.

An entry is stamped with the projection's checkpoint read *before* its query, so any commit that
could change the rows makes the stamp old and the next read goes to PostgreSQL. Read-your-writes
holds in this process because a write answers only once the checkpoint has reached it. Between api
replicas a write is visible here once its NOTIFY arrives (milliseconds); while the watcher has lost
PostgreSQL the cache is bypassed, since stamps could no longer move.

What customers store decides how large a body is, so the cache is bounded by bytes as well as by
entries: least recently used entries go first, and a body larger than the whole budget is served
but not kept."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from services.api.consistency import CheckpointWatcher

MAX_ENTRIES = 10_000
MAX_BYTES = 64 * 1024 * 1024

Value = TypeVar("Value")


class ReadCache(Generic[Value]):
    def __init__(
        self,
        watcher: CheckpointWatcher,
        size_of: Callable[[Value], int],
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._watcher = watcher
        self._size_of = size_of
        self._max = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[int, Value, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(
        self, projection: str, key: str, load: Callable[[], Awaitable[Value]]
    ) -> Value:
        if not self._watcher.connected:
            return await load()
        stamp = self._watcher.seen(projection)
        entry = self._entries.get((projection, key))
        if entry is not None and entry[0] == stamp:
            self.hits += 1
            self._entries.move_to_end((projection, key))
            return entry[1]
        value = await load()
        self._store((projection, key), stamp, value)
        return value

    def _store(self, key: tuple[str, str], stamp: int, value: Value) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        size = self._size_of(value)
        if size > self._max_bytes:
            return
        self._entries[key] = (stamp, value, size)
        self.bytes += size
        while len(self._entries) > self._max or self.bytes > self._max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
