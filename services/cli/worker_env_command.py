"""`gpuworker endpoints worker-env ENDPOINT_ID WORKER_ID --url URL`: the operator's way to run a
worker by hand (or in a test) before the autoscaler starts them: prints the environment the runpod
SDK needs (services/worker_env.py) for the endpoint's current version, as `NAME=value` lines
(`set -a; . <(gpuworker endpoints worker-env …)`) or JSON.

It reads the endpoint from the read model (DATABASE_URL) and mints the worker's token with
GPUWORKER_SECRET_KEY, as in `.gpuworker/connection.env` under `gpuworker up`."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from typing import Any

from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.config import ConfigurationError, Settings
from services.deciders.endpoint import EndpointState
from services.security.worker_tokens import WorkerTokens
from services.worker_env import worker_env


async def _endpoint(database_url: str, endpoint_id: str) -> EndpointState | None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await pool.open()
    try:
        state: EndpointState | None = await read_models.get(
            pool, PROJECTIONS["endpoints"], endpoint_id
        )
        return state
    finally:
        await pool.close()


def print_worker_env(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 2
    endpoint = asyncio.run(_endpoint(settings.database_url, args.endpoint_id))
    if endpoint is None or endpoint.deleted:
        print(f"gpuworker: no endpoint {args.endpoint_id}", file=sys.stderr)
        return 1
    try:
        env = worker_env(
            args.url,
            endpoint.id,
            args.worker_id,
            endpoint.config_version,
            WorkerTokens(settings.secret_key),
            settings.worker_ping_interval_s,
        )
    except ValueError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        print("\n".join(f"{name}={shlex.quote(value)}" for name, value in env.items()))
    return 0
