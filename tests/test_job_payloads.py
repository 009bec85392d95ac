"""Job payloads: always durable in PostgreSQL first; the recent bodies an api process keeps only
spare it reading back what it has just written, and never serve a body past its time or budget."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from services.api.job_payloads import JobPayloads, RecentBodies, ref_of
from tests.manual_clock import ManualClock


def test_a_kept_body_is_served_until_its_time_is_up() -> None:
    clock = ManualClock()
    recent = RecentBodies(ttl_s=60, clock=clock)
    recent.keep(("j1", "aa"), b"input")
    clock.now += 59
    assert recent.get(("j1", "aa")) == b"input"
    assert recent.get(("j1", "bb")) is None  # another content address of the same job
    clock.now += 2
    assert recent.get(("j1", "aa")) is None
    assert recent.bytes == 0 and len(recent) == 0


def test_bodies_past_the_budget_go_oldest_first_and_large_ones_are_not_kept() -> None:
    recent = RecentBodies(max_bytes=10, max_body=6, clock=ManualClock())
    recent.keep(("a", "1"), b"aaaa")
    recent.keep(("b", "1"), b"bbbb")
    recent.keep(("c", "1"), b"cccc")
    assert recent.get(("a", "1")) is None
    assert recent.get(("b", "1")) == b"bbbb" and recent.get(("c", "1")) == b"cccc"
    recent.keep(("d", "1"), b"d" * 7)
    assert recent.get(("d", "1")) is None
    assert recent.bytes == 8


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["keep", "get", "tick"]),
            st.integers(0, 15),
            # Sizes spread evenly up to past the largest kept body, so the budget is often hit.
            st.integers(0, 40).map(lambda n: bytes([n]) * n),
        ),
        max_size=60,
    )
)
def test_the_budget_holds_and_a_served_body_is_the_last_one_kept(
    steps: list[tuple[str, int, bytes]],
) -> None:
    clock = ManualClock()
    recent = RecentBodies(max_bytes=64, max_body=32, ttl_s=10, clock=clock)
    last: dict[str, tuple[float, bytes]] = {}
    for action, n, body in steps:
        key = (f"job{n}", "sha")
        if action == "keep":
            recent.keep(key, body)
            if len(body) <= 32:
                last[key[0]] = (clock.now, body)
            else:
                last.pop(key[0], None)
        elif action == "get":
            served = recent.get(key)
            if served is not None:
                kept_at, expected = last[key[0]]
                assert served == expected and clock.now < kept_at + 10
        else:
            clock.now += n * 2
        assert recent.bytes <= 64
        assert recent.bytes == sum(len(recent._entries[k][1]) for k in recent._entries)


async def test_every_body_is_in_postgres_and_another_process_reads_it_there(
    pool: AsyncConnectionPool[Any],
) -> None:
    writer = JobPayloads(pool)
    ref = await writer.put("job-1", b'{"prompt": "hi"}')
    assert ref == ref_of(b'{"prompt": "hi"}')
    # Served from what this process kept: no read.
    assert await writer.get("job-1", ref) == b'{"prompt": "hi"}'
    assert writer.recent.hits == 1
    # Another api process has nothing kept: it reads PostgreSQL.
    reader = JobPayloads(pool)
    other = await writer.put("job-2", b"[1, 2]")
    found = await reader.get_many([("job-1", ref), ("job-2", other), ("job-3", other)])
    assert found == {("job-1", ref.sha256): b'{"prompt": "hi"}', ("job-2", other.sha256): b"[1, 2]"}
    assert reader.recent.hits == 0
    # A content address names one body: a different result for the same job is another key.
    assert await writer.get("job-1", ref_of(b"other")) is None


async def test_puts_at_the_same_moment_share_a_statement_and_each_is_durable(
    pool: AsyncConnectionPool[Any],
) -> None:
    payloads = JobPayloads(pool, writers=1)
    refs = await asyncio.gather(*(payloads.put(f"job-{n}", b"[%d]" % n) for n in range(50)))
    # All were queued before the writer ran: one statement wrote them all.
    assert payloads.statements == 1
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT job_id, sha256, body FROM job_payloads")
        rows = {(job, sha): bytes(body) for job, sha, body in await cur.fetchall()}
    assert rows == {(f"job-{n}", refs[n].sha256): b"[%d]" % n for n in range(50)}


async def test_a_failed_batch_fails_each_of_its_puts_and_the_next_batch_is_written(
    pool: AsyncConnectionPool[Any],
) -> None:
    payloads = JobPayloads(pool, writers=1)
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE job_payloads RENAME TO job_payloads_away")
    results = await asyncio.gather(
        *(payloads.put(f"job-{n}", b"%d" % n) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, psycopg.errors.UndefinedTable) for r in results), results
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE job_payloads_away RENAME TO job_payloads")
    ref = await payloads.put("job-9", b"9")
    assert await JobPayloads(pool).get("job-9", ref) == b"9"


async def test_a_put_right_after_the_writers_finish_is_written(
    pool: AsyncConnectionPool[Any],
) -> None:
    """A writer that found the queue empty is done at once, not when its task's done callback
    runs: a put in between (here, the next put of the task its last write woke) must start a
    writer, or it waits forever (a worker's done call that never answered, in bench/jobs.py)."""
    payloads = JobPayloads(pool, writers=1)
    for n in range(20):
        async with asyncio.timeout(5):  # not wait_for: its task would add a turn of the loop
            ref = await payloads.put(f"job-{n}", b"%d" % n)
        assert ref == ref_of(b"%d" % n)
