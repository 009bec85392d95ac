"""`gpuworker deciders`: answers commands; seeds the built-in templates."""

from __future__ import annotations

import logging
import os

from events.store import JetStreamEventStore
from services.config import Settings
from services.deciders.builtin_templates import builtin_templates
from services.deciders.catalog import DECIDERS
from services.nats_connection import connect_role
from services.nats_permissions import DECIDERS_USER
from services.processes.autoscaler import Autoscaler
from services.processes.fleet_view import FleetView
from services.processes.gpu_releaser import GpuReleaser
from services.processes.host_monitor import HostMonitor
from services.processes.host_work_router import HostWorkRouter
from services.processes.job_dispatcher import DispatchConfig, JobDispatcher
from services.processes.placement_service import PlacementService
from services.processes.runner import DeciderRunner
from services.processes.server import DeciderServer
from services.roles.lifecycle import ensure_stream, until_signalled

log = logging.getLogger("gpuworker.deciders")


def autoscaling() -> bool:
    """GPUWORKER_AUTOSCALER=0 leaves serverless workers to be run by hand (an operator's, or a
    test's, with `gpuworker endpoints worker-env`)."""
    return os.environ.get("GPUWORKER_AUTOSCALER", "1").lower() not in ("0", "off", "false")


async def seed_builtins(runner: DeciderRunner) -> None:
    for template_id, command in builtin_templates().items():
        reply = await runner.run("template", template_id, command, "seed")
        if reply.error is not None and reply.error.code != 409:
            log.warning("could not seed template %s: %s", template_id, reply.error.message)


async def run_deciders(settings: Settings) -> None:
    nc = await connect_role(settings, DECIDERS_USER)
    await ensure_stream(nc, settings.stream_replicas)
    store = JetStreamEventStore(nc)
    runner = DeciderRunner(store, DECIDERS)
    fleet = FleetView()
    await fleet.follow(nc)
    placement = PlacementService(runner, fleet)
    dispatcher = JobDispatcher(
        nc,
        runner,
        DispatchConfig(
            lost_after_s=settings.worker_lost_after_s, poll_max_s=settings.job_poll_max_s
        ),
    )
    server = DeciderServer(
        nc, runner, {"placement": placement.handle, "job_queue": dispatcher.handle_command}
    )
    await server.start()
    await dispatcher.start()
    monitor = HostMonitor(nc, runner, fleet, timeout_s=settings.host_timeout_s)
    await monitor.start()
    releaser = GpuReleaser(nc, runner, fleet)
    await releaser.start()
    work = HostWorkRouter(nc, store, settings.secret_key)
    await work.start(settings.stream_replicas)
    autoscaler = None
    if autoscaling():
        autoscaler = Autoscaler(nc, runner, placement, dispatcher, fleet)
        await autoscaler.start()
    else:
        log.warning("the autoscaler is off (GPUWORKER_AUTOSCALER): no serverless workers start")
    await seed_builtins(runner)
    log.info("deciders ready")
    try:
        await until_signalled()
    finally:
        if autoscaler is not None:
            await autoscaler.stop()
        await dispatcher.stop()
        await releaser.stop()
        await work.stop()
        await monitor.stop()
        await fleet.stop()
        await server.stop()
        await nc.close()
