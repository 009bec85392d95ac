"""The serverless workers of an agent's hosts: each one's container, driven towards what its
endpoint's events say, like the agent's instances (level-triggered: on events, on container
deaths, on a timer and after a restart), and reported with the host's time.

A worker's container is its endpoint's (the template's container with the endpoint's env), with
the worker protocol's env (services/worker_env.py: URLs, and a token for this worker of this
endpoint only) and the same containment as any customer container (the runtime's limits, the
tenant's own network, the image access check with the tenant's registry credential). Its URLs name
the agent's relay on the tenant network's gateway (services/agent/worker_relay.py), which forwards
the worker protocol alone to the api; on a runtime without networks of its own (simulated) they
name the api itself. Its GPUs are the lease the autoscaler's placement got for it on this host;
its vCPUs and memory those its GPU type rents with (the rate card).

Reports (`ReportWorker` on the endpoint): "running" at the container's StartedAt, "exited" at its
FinishedAt, "failed" when it could not be made (the autoscaler's backoff then applies; the agent
does not retry on its own). The ledger bills the worker from the first to the second."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from events.subjects import agent_command_subject
from services.agent.host_work_feed import HostWorkFeed
from services.agent.registry_credentials import registry_of
from services.agent.runtime import (
    GATEWAY_PLACEHOLDER,
    ContainerSpec,
    ContainerState,
    ImagePullFailed,
    InvalidContainerSpec,
    RegistryCredentials,
    Runtime,
)
from services.agent.worker_relay import WorkerRelay
from services.aggregate_follower import AggregateFollower
from services.api.command_bus import CommandBus
from services.deciders.decider import agent_actor
from services.deciders.endpoint import (
    ENDPOINT,
    EndpointState,
    ReportWorker,
    WorkerObservation,
    WorkerRecord,
)
from services.errors import GpuWorkerError
from services.worker_env import GivenToken, worker_env

log = logging.getLogger("gpuworker.agent.workers")

WORKER_KEY = "worker:"
# Where a worker finds its endpoint's network volume (RunPod's serverless path).
NETWORK_VOLUME_MOUNT = "/runpod-volume"
# A worker asked to stop gets this long to finish (SIGTERM), then SIGKILL.
STOP_TIMEOUT_S = 10.0
DEFAULT_RELAY_PORT = 9380


def network_volume_name(volume_id: str) -> str:
    return f"gpuworker-vol-{volume_id}"


def worker_spec(
    state: EndpointState,
    worker: WorkerRecord,
    protocol_env: dict[str, str],
    real_gpus: bool,
    auth: RegistryCredentials | None,
    gateway_env: list[str],
) -> ContainerSpec:
    container = state.container
    volume_id = state.settings.network_volume_id
    placement = worker.placement
    return ContainerSpec(
        instance_id=worker.id,
        image=container.image_name,
        owner_id=state.owner_id,
        registry_auth=auth,
        command=container.docker_start_cmd,
        # The protocol's env last: an endpoint cannot set it (reserved names), nor a template
        # override it.
        env={**container.env, **protocol_env},
        gpu_uuids=placement.gpu_uuids if real_gpus else [],
        memory_mb=1024 * max(1, placement.memory_in_gb),
        vcpus=placement.vcpu_count,
        volume_name=network_volume_name(volume_id) if volume_id else None,
        volume_mount_path=NETWORK_VOLUME_MOUNT,
        generation=worker.config_version,
        gateway_env=gateway_env,
    )


class HostWorkers:
    def __init__(
        self,
        nc: NatsClient,
        bus: CommandBus,
        hosts: Mapping[str, Any],
        runtime: Runtime,
        schedule: Callable[[str], None],
        api_url: str,
        ping_interval_s: int,
        feed: HostWorkFeed,
        relay_port: int = DEFAULT_RELAY_PORT,
        real_gpus: Callable[[str], bool] = lambda _host: False,
    ) -> None:
        self._nc = nc
        self._bus = bus
        self._hosts = hosts
        self._runtime = runtime
        self._schedule = schedule
        self._api_url = api_url
        self._ping_interval_s = ping_interval_s
        self._feed = feed
        self._real_gpus = real_gpus
        self._endpoints = AggregateFollower[EndpointState](ENDPOINT, on_change=self._changed)
        # Live workers of this agent's hosts: worker id -> endpoint id.
        self._where: dict[str, str] = {}
        self._here: dict[str, set[str]] = {}
        # Tenant gateway address -> the owner whose network it is.
        self._gateways: dict[str, str] = {}
        self.relay = WorkerRelay(api_url, self._relayed, relay_port)

    @property
    def endpoints(self) -> AggregateFollower[EndpointState]:
        """What the host's work feed fills: the endpoints with workers on these hosts."""
        return self._endpoints

    async def stop(self) -> None:
        await self.relay.close()

    # --- what the events say ---------------------------------------------------------------------

    def _changed(self, state: EndpointState, _sequence: int) -> None:
        here = {w.id for w in state.live_workers.values() if w.placement.host_id in self._hosts}
        before = self._here.get(state.id, set())
        self._here[state.id] = here
        for worker_id in before - here:
            self._where.pop(worker_id, None)
        for worker_id in here:
            self._where[worker_id] = state.id
        for worker_id in here | before:
            self._schedule(WORKER_KEY + worker_id)

    def knows(self, worker_id: str) -> bool:
        return worker_id in self._where

    def worker_ids(self) -> list[str]:
        return list(self._where)

    def host_of(self, worker_id: str) -> str | None:
        found = self._record(worker_id)
        return found[1].placement.host_id if found else None

    def _record(self, worker_id: str) -> tuple[EndpointState, WorkerRecord] | None:
        endpoint_id = self._where.get(worker_id)
        state = self._endpoints.get(endpoint_id) if endpoint_id else None
        worker = state.live_workers.get(worker_id) if state else None
        if state is None or worker is None or worker.placement.host_id not in self._hosts:
            return None
        return state, worker

    def _relayed(self, address: str, endpoint_id: str) -> bool:
        """The relay's rule: a worker protocol request that came in on `address` is forwarded
        only if it is about an endpoint of the tenant whose network that is, with a worker here."""
        owner = self._gateways.get(address)
        state = self._endpoints.get(endpoint_id)
        return (
            owner is not None
            and state is not None
            and state.owner_id == owner
            and bool(self._here.get(endpoint_id))
        )

    # --- reconciling ------------------------------------------------------------------------------

    async def reconcile(self, worker_id: str) -> None:
        actual = await self._runtime.inspect(worker_id)
        found = self._record(worker_id)
        if found is None:
            # Stopped, never started, or no worker of ours: its container goes.
            if actual.status != "missing":
                await self._runtime.remove(worker_id)
            return
        state, worker = found
        match worker.status:
            case "STARTING":
                if actual.status in ("missing", "created"):
                    made = await self._create(state, worker)
                    if made is None:
                        return
                    actual = made
                await self._report_container(state, worker, actual)
            case "RUNNING":
                if actual.status in ("exited", "missing"):
                    await self._ended(state, worker, actual)
                elif actual.status == "running":
                    await self._relay_for(state.owner_id)
            case "STOPPING":
                if actual.status in ("running", "created"):
                    actual = await self._runtime.stop(worker_id, STOP_TIMEOUT_S)
                if worker.started_at is None and actual.started_at is not None:
                    await self._report(state, worker, "running", actual.started_at)
                await self._ended(state, worker, actual)

    async def _report_container(
        self, state: EndpointState, worker: WorkerRecord, actual: ContainerState
    ) -> None:
        """What the container of a starting worker did: it runs, or it ran and ended already."""
        if actual.started_at is not None:
            await self._report(state, worker, "running", actual.started_at)
        if actual.status != "running":
            await self._ended(state, worker, actual)

    async def _ended(
        self, state: EndpointState, worker: WorkerRecord, actual: ContainerState
    ) -> None:
        reason = actual.reason or (
            "its container disappeared" if actual.status == "missing" else None
        )
        await self._report(
            state,
            worker,
            "exited",
            actual.finished_at or datetime.now(UTC),
            exit_code=actual.exit_code,
            reason=reason,
        )

    async def _relay_for(self, owner_id: str) -> str | None:
        """The relay on the owner's network (after a restart of the agent, the relay comes back
        for its running workers); the gateway address, None on a runtime without networks."""
        gateway = await self._runtime.tenant_gateway(owner_id)
        if gateway is not None:
            self._gateways[gateway] = owner_id
            await self.relay.ensure(gateway)
        return gateway

    async def _create(self, state: EndpointState, worker: WorkerRecord) -> ContainerState | None:
        """Made and started; None when it could not be (reported "failed" with why)."""
        try:
            gateway = await self._relay_for(state.owner_id)
        except (OSError, GpuWorkerError) as exc:
            await self._failed(state, worker, f"the host could not reach its api for it: {exc}")
            return None
        except Exception as exc:
            log.warning("worker %s: no tenant network: %s", worker.id, exc)
            await self._failed(state, worker, "its container's network could not be made")
            return None
        base = (
            self._api_url if gateway is None else f"http://{GATEWAY_PLACEHOLDER}:{self.relay.port}"
        )
        token = self._feed.worker_token(worker.placement.host_id, worker.id)
        if token is None:
            await self._failed(state, worker, "its worker token did not reach the host")
            return None
        protocol_env = worker_env(
            base,
            state.id,
            worker.id,
            worker.config_version,
            GivenToken(token),
            self._ping_interval_s,
        )
        gateway_env = sorted(k for k, v in protocol_env.items() if GATEWAY_PLACEHOLDER in v)
        auth = None
        if state.container.registry_auth_id:
            auth = self._feed.registry_credentials(
                worker.placement.host_id,
                state.container.registry_auth_id,
                state.owner_id,
                registry_of(state.container.image_name),
            )
        spec = worker_spec(
            state,
            worker,
            protocol_env,
            self._real_gpus(worker.placement.host_id),
            auth,
            gateway_env,
        )
        try:
            made = await self._runtime.create_and_start(spec)
        except (ImagePullFailed, InvalidContainerSpec) as exc:
            await self._failed(state, worker, str(exc))
            return None
        except GpuWorkerError:
            raise
        except Exception as exc:
            log.warning(
                "worker %s: container create/start failed: %s",
                worker.id,
                str(exc).strip() or type(exc).__name__,
            )
            # The half-made container goes; the autoscaler decides when to try again.
            await self._runtime.remove(worker.id)
            await self._failed(
                state,
                worker,
                "its container could not be created or started; check that the image runs here"
                " (a dockerStartCmd needs `sh` in the image)",
            )
            return None
        if gateway is not None:
            # Made anew between the two (another address): the relay listens there too.
            await self._relay_for(state.owner_id)
        return made

    async def _failed(self, state: EndpointState, worker: WorkerRecord, reason: str) -> None:
        log.warning("worker %s of endpoint %s failed to start: %s", worker.id, state.id, reason)
        await self._report(state, worker, "failed", datetime.now(UTC), reason=reason)

    async def _report(
        self,
        state: EndpointState,
        worker: WorkerRecord,
        observed: WorkerObservation,
        at: datetime,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        host_id = worker.placement.host_id
        reply = await self._bus.send_on(
            agent_command_subject(host_id, "endpoint"),
            state.id,
            ReportWorker(
                actor=agent_actor(host_id),
                at=at,
                worker_id=worker.id,
                observed=observed,
                exit_code=exit_code,
                reason=reason,
                lease_id=worker.placement.lease_id,
            ),
            correlation_id=f"agent:{worker.id}",
        )
        fresh = msgspec.json.decode(reply.state, type=EndpointState | None)
        self._endpoints.offer(state.id, fresh, reply.sequence)

    async def prune_relays(self) -> None:
        """Listeners only on the networks of tenants with workers here."""
        owners = {
            state.owner_id
            for endpoint_id, here in self._here.items()
            if here and (state := self._endpoints.get(endpoint_id)) is not None
        }
        keep = {a for a, owner in self._gateways.items() if owner in owners}
        self._gateways = {a: o for a, o in self._gateways.items() if a in keep}
        await self.relay.keep_only(keep)
