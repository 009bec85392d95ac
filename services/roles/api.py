"""`gpuworker api`: serves HTTP with uvicorn."""

from __future__ import annotations

import uvicorn

from projections.migrate import migrate
from services.api.app import create_app
from services.config import Settings


async def run_api(settings: Settings, host: str, port: int) -> None:
    await migrate(settings.database_url)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    await uvicorn.Server(config).serve()
