"""Projection rebuild speed: projections.rebuild.rebuild() of `templates` vs a raw consume + COPY.

    .venv/bin/python bench/rebuild.py [--aggregates 100000] [--fetch 2000]

Setup: an embedded nats-server (`nats-server -js -sd DIR`, default fsync) and embedded PostgreSQL
in a temp dir; the product's EVENTS stream (JetStreamEventStore.ensure_stream); then, published
straight to JetStream with pipelined acks, one TemplateCreated and one TemplateUpdated per
aggregate (100k aggregates = 200k events, in the product's envelope and subjects).

Product: migrate(), then rebuild(conninfo, nc, PROJECTIONS["templates"]) -- pull every event,
decode + upcast, fold with the decider's evolve, COPY one row per aggregate, move the checkpoint.
Baseline (same run, same messages): an ephemeral pull consumer fetching the same batch size with
no decoding, then one COPY of every message as (seq, subject, payload text) into a plain table.
An informational second baseline consumes the same way but without nats-py's fetch() (raw pull
requests answered into a callback subscription), to show what the consume itself can do.
events/s = events in the stream / wall seconds of the whole operation; CPU microseconds per event
(this process, and nats-server + PostgreSQL) are printed too, being steadier on a busy machine."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from benchlib import (
    CpuMeter,
    NatsServer,
    Postgres,
    machine_line,
    make_workdir,
    remove_workdir,
    sigterm_as_interrupt,
    verdict,
)
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.catalog import version_of
from events.container import ContainerChanges, ContainerConfig
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.ids import new_id
from events.store import JetStreamEventStore
from events.subjects import STREAM, event_subject
from events.template import TemplateCreated, TemplateUpdated
from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.rebuild import rebuild

GOAL_EVENTS_PER_S = 30_000.0
OWNERS = 1000
PUBLISH_WINDOW = 4000


def template_events(aggregate_id: str, owner: str, at: datetime) -> list[tuple[str, bytes]]:
    ref = AggregateRef("template", aggregate_id)
    created = TemplateCreated(
        name=f"template {aggregate_id[-6:]}",
        container=ContainerConfig(
            image_name="ghcr.io/bench/rebuild:latest",
            docker_start_cmd="python -m http.server 8888",
            container_disk_in_gb=40,
            volume_in_gb=100,
            volume_mount_path="/workspace",
            env={"MODEL": "llama", "HF_HOME": "/workspace/hf"},
            ports=["8888/http", "22/tcp"],
        ),
        readme="Created by bench/rebuild.py.",
        is_public=False,
    )
    updated = TemplateUpdated(
        name=f"renamed {aggregate_id[-6:]}", container=ContainerChanges(container_disk_in_gb=80)
    )
    out = []
    for i, data in enumerate((created, updated)):
        envelope = Envelope(
            id=new_id(),
            type=type(data).__name__,
            version=version_of(data),
            aggregate=ref,
            occurred_at=at + timedelta(seconds=i),
            recorded_at=at + timedelta(seconds=i),
            actor=owner,
            correlation_id=new_id(),
            causation_id=None,
            data=data,
        )
        out.append(
            (event_subject("template", aggregate_id, envelope.type), encode_envelope(envelope))
        )
    return out


async def publish_events(nc: NatsClient, aggregates: int) -> tuple[int, float]:
    """All TemplateCreated first, then all TemplateUpdated; acks pipelined (bounded window)."""
    js = nc.jetstream(timeout=30, publish_async_max_pending=PUBLISH_WINDOW)
    owners = [new_id() for _ in range(OWNERS)]
    at = datetime(2025, 1, 1, tzinfo=UTC)
    ids = [new_id() for _ in range(aggregates)]
    pairs = [template_events(a, owners[i % OWNERS], at) for i, a in enumerate(ids)]
    started = time.perf_counter()
    futures: list[asyncio.Future[Any]] = []
    for which in (0, 1):
        for pair in pairs:
            subject, payload = pair[which]
            futures.append(await js.publish_async(subject, payload))
            if len(futures) >= PUBLISH_WINDOW:
                await asyncio.gather(*futures)
                futures.clear()
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    info = await js.stream_info(STREAM)
    return int(info.state.messages), elapsed


@dataclass
class Timing:
    events: int
    seconds: float
    detail: str
    python_cpu_s: float = 0.0
    servers_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def consume_with_fetch(nc: NatsClient, fetch: int) -> list[tuple[int, str, str]]:
    """What the brief calls the raw consume: an ephemeral pull consumer drained with
    psub.fetch() batches, exactly as projections.rebuild.read_all pulls (minus decoding)."""
    js = nc.jetstream(timeout=10)
    psub = await js.pull_subscribe(
        "ev.template.>",
        durable=None,
        stream=STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            max_waiting=1,
        ),
    )
    remaining = (await psub.consumer_info()).num_pending or 0
    rows: list[tuple[int, str, str]] = []
    try:
        while remaining > 0:
            msgs = await psub.fetch(min(fetch, remaining), timeout=10)
            rows.extend((m.metadata.sequence.stream, m.subject, m.data.decode()) for m in msgs)
            remaining = msgs[-1].metadata.num_pending
    finally:
        await psub.unsubscribe()
    return rows


async def consume_with_callback(nc: NatsClient, fetch: int) -> list[tuple[int, str, str]]:
    """The same pull consumer, without nats-py's fetch(): each pull request
    ($JS.API.CONSUMER.MSG.NEXT, no_wait) is answered into a plain subscription whose callback
    collects the batch. fetch() awaits next_msg() (asyncio.wait_for, a new Task) per message."""
    js = nc.jetstream(timeout=10)
    info = await js.add_consumer(
        STREAM,
        ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            filter_subject="ev.template.>",
        ),
    )
    rows: list[tuple[int, str, str]] = []
    batch: list[Msg] = []
    want = 0
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status"):  # 404/408: nothing (more) to deliver
            done.set()
            return
        batch.append(msg)
        if len(batch) >= want:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    remaining = info.num_pending or 0
    try:
        while remaining > 0:
            want, batch = min(fetch, remaining), []
            done.clear()
            request = json.dumps({"batch": want, "no_wait": True}).encode()
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{info.name}", request, inbox)
            await asyncio.wait_for(done.wait(), 10)
            if not batch:
                break
            rows.extend((m.metadata.sequence.stream, m.subject, m.data.decode()) for m in batch)
            remaining = batch[-1].metadata.num_pending
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(STREAM, info.name)
    return rows


Consume = Callable[[NatsClient, int], Awaitable[list[tuple[int, str, str]]]]


async def raw_baseline(nc: NatsClient, conninfo: str, fetch: int, consume: Consume) -> Timing:
    started = time.perf_counter()
    rows = await consume(nc, fetch)
    consumed = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_events (seq bigint, subject text, payload text)"
        )
        await conn.execute("TRUNCATE raw_events")
        async with (
            conn.cursor() as cur,
            cur.copy("COPY raw_events (seq, subject, payload) FROM STDIN") as copy,
        ):
            for row in rows:
                await copy.write_row(row)
    done = time.perf_counter()
    return Timing(
        len(rows),
        done - started,
        f"consume {consumed - started:.2f}s + COPY {len(rows)} rows {done - consumed:.2f}s",
    )


async def timed(meter: CpuMeter, work: Awaitable[Timing]) -> Timing:
    """Adds this process's CPU time and the servers' (nats-server, PostgreSQL) to a Timing."""
    gc.collect()
    meter.start()
    cpu = time.process_time()
    result = await work
    result.python_cpu_s = time.process_time() - cpu
    result.servers_cpu_s = meter.stop()
    return result


async def product_rebuild(nc: NatsClient, conninfo: str, events: int) -> Timing:
    started = time.perf_counter()
    rows, _inner = await rebuild(conninfo, nc, PROJECTIONS["templates"])
    elapsed = time.perf_counter() - started
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE doc->>'version' = '2'"
            " AND starts_with(doc->>'name', 'renamed ')"
            " AND (doc->'container'->>'container_disk_in_gb')::int = 80)"
            " FROM templates"
        )
        total, complete = (await cur.fetchone()) or (0, 0)
    return Timing(events, elapsed, f"{rows} rows written; {complete}/{total} rows show both events")


async def run(nats_server: NatsServer, postgres: Postgres, args: argparse.Namespace) -> None:
    conninfo = postgres.url
    meter = CpuMeter(lambda: [*nats_server.pids(), *postgres.pids()])
    nc = await nats_server.connect("bench-rebuild")
    operator = await nats_server.connect("bench-rebuild-operator", user="operator")
    try:
        await JetStreamEventStore(nc).ensure_stream()
        events, publish_s = await publish_events(nc, args.aggregates)
        expected = 2 * args.aggregates
        if events != expected:
            raise RuntimeError(f"stream holds {events} messages, expected {expected}")
        print(f"[rebuild] published {events} events in {publish_s:.1f}s", flush=True)
        await migrate(conninfo)
        baseline = await timed(meter, raw_baseline(nc, conninfo, args.fetch, consume_with_fetch))
        print(f"[rebuild] raw baseline (fetch): {baseline.rate:,.0f} events/s", flush=True)
        fast = await timed(meter, raw_baseline(nc, conninfo, args.fetch, consume_with_callback))
        print(f"[rebuild] raw baseline (callback): {fast.rate:,.0f} events/s", flush=True)
        product = await timed(meter, product_rebuild(operator, conninfo, events))
        print(f"[rebuild] product rebuild: {product.rate:,.0f} events/s", flush=True)
        if not product.detail.startswith(f"{args.aggregates} rows"):
            raise RuntimeError(f"rebuild wrote the wrong rows: {product.detail}")
    finally:
        await nc.close()
        await operator.close()
    report(args, events, publish_s, baseline, fast, product)


def report(
    args: argparse.Namespace,
    events: int,
    publish_s: float,
    baseline: Timing,
    fast: Timing,
    product: Timing,
) -> None:
    ratio = product.rate / baseline.rate if baseline.rate else 0.0
    fast_ratio = product.rate / fast.rate if fast.rate else 0.0
    print()
    print("=" * 100)
    print(
        f"BENCH rebuild: templates projection, {events:,} events"
        f" ({args.aggregates:,} aggregates x TemplateCreated + TemplateUpdated)"
    )
    print(f"  {machine_line()}; setup publish {events / publish_s:,.0f} events/s")
    print(
        f"  {'':<34}{'seconds':>9}{'events/s':>10}{'py CPU us/ev':>14}{'srv CPU us/ev':>15}"
        "   detail"
    )
    for label, t in (
        ("product rebuild()", product),
        ("raw fetch() + COPY (baseline)", baseline),
        ("raw callback pull + COPY (info)", fast),
    ):
        print(
            f"  {label:<34}{t.seconds:>9.2f}{t.rate:>10,.0f}"
            f"{1e6 * t.python_cpu_s / t.events:>14.1f}{1e6 * t.servers_cpu_s / t.events:>15.1f}"
            f"   {t.detail}"
        )
    print("  py CPU = this process (the consumer); srv CPU = nats-server + PostgreSQL; per event")
    print(f"  ratio product/baseline events/s: {ratio:.3f}x (no ratio goal was set)")
    print(f"  ratio product/callback-pull baseline: {fast_ratio:.3f}x (info)")
    print(
        f"  product events/s: {product.rate:,.0f}   goal >= {GOAL_EVENTS_PER_S:,.0f}   ->"
        f" {verdict(product.rate >= GOAL_EVENTS_PER_S)}"
    )
    print("=" * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aggregates", type=int, default=100_000)
    parser.add_argument("--fetch", type=int, default=2000, help="baseline batch (product: 2000)")
    args = parser.parse_args()
    sigterm_as_interrupt()
    workdir = make_workdir("rebuild")
    nats_server = NatsServer(workdir, sync_always=False)
    postgres = Postgres(workdir)
    try:
        nats_server.start()
        postgres.start()
        asyncio.run(run(nats_server, postgres, args))
    finally:
        nats_server.stop()
        postgres.stop()
        remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
