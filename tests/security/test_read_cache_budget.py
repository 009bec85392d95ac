"""Finding 11: the read cache is bounded by bytes, not only by entries.

It held up to 10,000 list bodies whatever their size: with 53 MiB lists, a few users' reads could
take the api's memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.api.consistency import CheckpointWatcher
from services.api.read_cache import ReadCache


async def test_least_recently_used_bodies_go_once_over_the_byte_budget(
    checkpoint_watcher: CheckpointWatcher,
) -> None:
    cache = ReadCache[bytes](checkpoint_watcher, len, max_bytes=1000)
    loads: list[str] = []

    def loader(key: str, size: int) -> Callable[[], Awaitable[bytes]]:
        async def load() -> bytes:
            loads.append(key)
            return b"x" * size

        return load

    for key in ("a", "b"):
        await cache.get_or_load("templates", key, loader(key, 400))
    await cache.get_or_load("templates", "a", loader("a", 400))  # a is now the most recent
    assert loads == ["a", "b"] and cache.hits == 1
    await cache.get_or_load("templates", "c", loader("c", 400))
    # 1200 bytes would pass the budget: b, the least recently used, went.
    assert cache.bytes <= 1000 and len(cache) == 2
    await cache.get_or_load("templates", "a", loader("a", 400))
    await cache.get_or_load("templates", "b", loader("b", 400))
    assert loads == ["a", "b", "c", "b"]

    # A body larger than the whole budget is served, and not kept.
    assert len(await cache.get_or_load("templates", "huge", loader("huge", 5000))) == 5000
    await cache.get_or_load("templates", "huge", loader("huge", 5000))
    assert loads[-2:] == ["huge", "huge"]
    assert cache.bytes <= 1000
