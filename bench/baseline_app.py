"""Bare Litestar apps the benchmarks measure the product against (same uvicorn settings).

    python bench/baseline_app.py reads  --port P --items FILE.json [--path templates|instances]
        GET /templates (or /instances): the same items, decoded once into the product's
        TemplateOut (InstanceOut) Structs and returned from memory. No auth, no database.
    python bench/baseline_app.py writes --port P   (env DATABASE_URL, NATS_URL, and the login:
                                                   GPUWORKER_NATS_USER/PASSWORD)
        POST /templates: validate the product's TemplateIn body, one JetStream publish with ack
        (stream FLOOR, file storage), one PostgreSQL INSERT + commit, answer 201 with the row.

uvicorn runs in the configuration a user comparing frameworks would pick: uvloop, httptools, no
access log, one worker (`--loop asyncio` for the stdlib loop)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.params import JSONBody

from events.ids import new_id
from services import event_loop
from services.api.instances import InstanceOut
from services.api.templates import TemplateIn, TemplateOut

FLOOR_STREAM = "FLOOR"
FLOOR_TABLE = "floor_templates"


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


def reads_app(items_file: Path, path: str) -> Litestar:
    if path == "instances":
        instances = msgspec.json.decode(items_file.read_bytes(), type=list[InstanceOut])

        @get("/instances")
        async def list_instances() -> list[InstanceOut]:
            return instances

        return Litestar(route_handlers=[list_instances, health], debug=False)
    items = msgspec.json.decode(items_file.read_bytes(), type=list[TemplateOut])

    @get("/templates")
    async def list_templates() -> list[TemplateOut]:
        return items

    return Litestar(route_handlers=[list_templates, health], debug=False)


def writes_app() -> Litestar:
    import os

    import nats
    from nats.js.api import StorageType, StreamConfig
    from psycopg_pool import AsyncConnectionPool

    database_url = os.environ["DATABASE_URL"]
    nats_url = os.environ["NATS_URL"]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Same pool bounds as the product's api (services/api/app.py).
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url, min_size=2, max_size=16, timeout=3.0, open=False
        )
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id text PRIMARY KEY,"
                " owner_id text, created_at timestamptz NOT NULL, doc jsonb NOT NULL)"
            )
        nc = await nats.connect(
            nats_url,
            name="floor",
            pending_size=0,
            user=os.environ.get("GPUWORKER_NATS_USER"),
            password=os.environ.get("GPUWORKER_NATS_PASSWORD"),
        )
        js = nc.jetstream(timeout=5)
        await js.add_stream(
            StreamConfig(name=FLOOR_STREAM, subjects=["floor.>"], storage=StorageType.FILE)
        )
        app.state.pool = pool
        app.state.js = js
        try:
            yield
        finally:
            await nc.close()
            await pool.close()

    encode = msgspec.json.Encoder().encode
    insert = f"INSERT INTO {FLOOR_TABLE} (id, owner_id, created_at, doc) VALUES (%s, %s, %s, %s)"

    @post("/templates", status_code=201)
    async def create_template(
        request: Request[Any, Any, Any], data: JSONBody[TemplateIn]
    ) -> TemplateOut:
        now = datetime.now(UTC)
        out = TemplateOut(
            id=new_id(),
            is_public=False,
            created_at=now,
            updated_at=now,
            **msgspec.structs.asdict(data),
        )
        doc = encode(out)
        await request.app.state.js.publish(f"floor.template.{out.id}", doc)
        async with request.app.state.pool.connection() as conn:
            # The pool's connection context commits on exit: one INSERT, one commit.
            await conn.execute(insert, (out.id, "bench", now, doc.decode()))
        return out

    return Litestar(route_handlers=[create_template, health], lifespan=[lifespan], debug=False)


async def serve(app: Litestar, port: int) -> None:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        http="httptools",
    )
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["reads", "writes"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--items", type=Path)
    parser.add_argument("--path", choices=["templates", "instances"], default="templates")
    parser.add_argument("--loop", choices=event_loop.CHOICES, default="uvloop")
    args = parser.parse_args()
    if args.mode == "reads":
        if args.items is None:
            parser.error("reads needs --items")
        app = reads_app(args.items, args.path)
    else:
        app = writes_app()
    event_loop.run(serve(app, args.port), args.loop)


if __name__ == "__main__":
    main()
