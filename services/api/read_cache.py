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

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import msgspec

from services.api.consistency import CheckpointWatcher

MAX_ENTRIES = 10_000
MAX_BYTES = 64 * 1024 * 1024


def encoded_size(value: object) -> int:
    """What a read-model row weighs in the cache: its JSON size (about what it holds)."""
    return len(msgspec.json.encode(value))


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
        self._entries: OrderedDict[tuple[str, str], tuple[tuple[int, ...], Value, int]] = (
            OrderedDict()
        )
        self._loading: dict[tuple[tuple[str, str], tuple[int, ...]], asyncio.Future[Value]] = {}
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(
        self,
        projections: str | Sequence[str],
        key: str,
        load: Callable[[], Awaitable[Value]],
        moment: int | None = None,
    ) -> Value:
        """`projections`: every read model the value is made of; `moment`: for a value that also
        moves with time (a cost to date), the time it is good for, in whatever unit it moves."""
        if not self._watcher.connected:
            return await load()
        names = (projections,) if isinstance(projections, str) else tuple(projections)
        stamp = tuple(self._watcher.seen(name) for name in names)
        if moment is not None:
            stamp += (moment,)
        slot = (",".join(names), key)
        entry = self._entries.get(slot)
        if entry is not None and entry[0] == stamp:
            self.hits += 1
            self._entries.move_to_end(slot)
            return entry[1]
        # Single flight: when a stamp moves, every request in flight misses at once; one load
        # serves them all instead of each running the same queries.
        flight = self._loading.get((slot, stamp))
        if flight is not None:
            try:
                shared = await asyncio.shield(flight)
            except asyncio.CancelledError:
                if not flight.cancelled():
                    raise  # this request itself was cancelled
                return await load()  # the request that was loading went away: load here
            self.hits += 1
            return shared
        flight = asyncio.get_running_loop().create_future()
        self._loading[(slot, stamp)] = flight
        try:
            value = await load()
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except Exception as exc:
            flight.set_exception(exc)
            # Nobody else may be waiting: the exception is the caller's, not an unread one.
            flight.exception()
            raise
        else:
            flight.set_result(value)
            self._store(slot, stamp, value)
            return value
        finally:
            del self._loading[(slot, stamp)]

    def _store(self, key: tuple[str, str], stamp: tuple[int, ...], value: Value) -> None:
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
