"""Each GPU host's work, published where only that host's agent reads it.

An agent needs the instances, volumes and serverless workers of its own host, and a registry
password or a worker token now and then. It used to read the whole event stream and hold
GPUWORKER_SECRET_KEY for that, so one compromised host could read every customer's events and
open every secret. Here the deciders follow those aggregates and put, for each host something is
on, the aggregate's latest state on `work.<host>.<type>.<id>` in the WORK stream (one message per
subject: a host's work is a last-value map). What a host needs in clear is sealed with that
host's own key (services/security/host_keys.py). The agent's NATS login may read only its own
host's subjects (services/nats_permissions.py).

A host gets an aggregate's states while it has something of it, and then one more: the state
that has nothing left on it, which is what tells its agent to remove the container.

Replicas of the deciders all route. A state never replaces a newer one: each publish expects
the subject's last message to be the one this process last saw there
(Nats-Expected-Last-Subject-Sequence); when another replica wrote in between, the message now
there is read, and ours is dropped unless it is newer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig

from events.envelope import AggregateRef
from events.store import EventStore
from events.subjects import WORK_ROOT, WORK_STREAM, work_subject
from services.aggregate_follower import AggregateFollower
from services.deciders.decider import Decider
from services.deciders.endpoint import ENDPOINT, EndpointState
from services.deciders.instance import INSTANCE, InstanceState
from services.deciders.registry_auth import REGISTRY_AUTH, RegistryAuthState, sealed_for
from services.deciders.volume import VOLUME
from services.host_work_wire import (
    SealedRegistryAuth,
    WorkItem,
    registry_secret,
    secret_bound_to,
    token_secret,
)
from services.security.host_keys import sealed_box
from services.security.secret_box import SecretBox, SecretBoxError
from services.security.worker_tokens import WorkerTokens

log = logging.getLogger("gpuworker.host_work")

# JetStream's answer when the subject's last sequence is not the one a publish expected.
WRONG_LAST_SEQUENCE = 10071
_encode = msgspec.json.Encoder().encode
_decode_item = msgspec.json.Decoder(WorkItem).decode


async def ensure_work_stream(nc: NatsClient, replicas: int = 1) -> None:
    """Idempotent, like the event stream's: the deciders make it."""
    js = nc.jetstream(timeout=5)
    try:
        await js.stream_info(WORK_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=WORK_STREAM,
                subjects=[f"{WORK_ROOT}.>"],
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_msgs_per_subject=1,
                allow_direct=True,
            )
        )


def hosts_of(aggregate_type: str, state: Any) -> set[str]:
    if aggregate_type == "endpoint":
        return {w.placement.host_id for w in state.live_workers.values()}
    return {state.host_id}


def for_host(aggregate_type: str, state: Any, host_id: str) -> Any:
    """What the host is shown: an endpoint's workers on other hosts are not its business."""
    if aggregate_type != "endpoint":
        return state
    mine = {k: w for k, w in state.live_workers.items() if w.placement.host_id == host_id}
    return msgspec.structs.replace(state, live_workers=mine)


class HostWorkRouter:
    def __init__(
        self,
        nc: NatsClient,
        store: EventStore,
        master_key: str,
        publishers: int = 16,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=5)
        self._store = store
        self._master_key = master_key
        self._master_box = SecretBox(master_key)
        self._tokens = WorkerTokens(master_key)
        self._boxes: dict[str, SecretBox] = {}
        self._followers: dict[str, AggregateFollower[Any]] = {
            "instance": self._follower(INSTANCE),
            "volume": self._follower(VOLUME),
            "endpoint": self._follower(ENDPOINT),
        }
        # Per aggregate: the hosts its last routed state was for (they get the next one too).
        self._targets: dict[tuple[str, str], set[str]] = {}
        # Per subject: (stream sequence of its last message, event sequence that message holds).
        self._seen: dict[str, tuple[int, int]] = {}
        self._due: dict[str, tuple[str, str, str]] = {}
        self._busy: set[str] = set()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._publishers = publishers
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    def _follower(self, decider: Decider[Any]) -> AggregateFollower[Any]:
        kind = decider.aggregate_type

        def on_change(state: Any, _sequence: int) -> None:
            self._changed(kind, state)

        return AggregateFollower(decider, on_change=on_change)

    async def start(self, replicas: int = 1) -> None:
        await ensure_work_stream(self._nc, replicas)
        for follower in self._followers.values():
            await follower.follow(self._nc)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name=f"host-work-{i}")
            for i in range(self._publishers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for follower in self._followers.values():
            await follower.stop()

    def _changed(self, kind: str, state: Any) -> None:
        key = (kind, state.id)
        now = hosts_of(kind, state)
        for host_id in self._targets.get(key, set()) | now:
            subject = work_subject(host_id, kind, state.id)
            if subject not in self._due:
                self._due[subject] = (kind, state.id, host_id)
                if subject not in self._busy:
                    self._queue.put_nowait(subject)
        self._targets[key] = now

    async def _publish_loop(self) -> None:
        while True:
            subject = await self._queue.get()
            if subject in self._busy or subject not in self._due:
                continue
            self._busy.add(subject)
            kind, aggregate_id, host_id = self._due.pop(subject)
            try:
                await self._publish(subject, kind, aggregate_id, host_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("work for %s not published yet (%s); retrying", subject, exc)
                self._due.setdefault(subject, (kind, aggregate_id, host_id))
                await asyncio.sleep(0.5)
            finally:
                self._busy.discard(subject)
                if subject in self._due:
                    self._queue.put_nowait(subject)

    async def _publish(self, subject: str, kind: str, aggregate_id: str, host_id: str) -> None:
        entry = self._followers[kind].entry(aggregate_id)
        if entry is None:
            return
        state, sequence = entry
        for _ in range(10):
            seen = self._seen.get(subject) or await self._last(subject)
            if seen[1] >= sequence:
                return
            item = WorkItem(
                sequence=sequence,
                state=msgspec.Raw(_encode(for_host(kind, state, host_id))),
                sealed=await self._sealed(kind, state, host_id),
            )
            try:
                ack = await self._js.publish(
                    subject,
                    _encode(item),
                    stream=WORK_STREAM,
                    headers={"Nats-Expected-Last-Subject-Sequence": str(seen[0])},
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                self._seen.pop(subject, None)  # another replica wrote: look again
                continue
            self._seen[subject] = (ack.seq, sequence)
            self.published += 1
            return
        raise RuntimeError("the subject kept changing under us")

    async def _last(self, subject: str) -> tuple[int, int]:
        try:
            msg = await self._js.get_last_msg(WORK_STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return (0, 0)
        seq = msg.seq or 0
        if not msg.data:
            return (seq, 0)
        return (seq, _decode_item(msg.data).sequence)

    def _box(self, host_id: str) -> SecretBox:
        box = self._boxes.get(host_id)
        if box is None:
            box = self._boxes[host_id] = sealed_box(self._master_key, host_id)
        return box

    async def _sealed(self, kind: str, state: Any, host_id: str) -> dict[str, str]:
        """What the host must have in clear for this aggregate, sealed with its key."""
        sealed: dict[str, str] = {}
        if kind == "volume":
            return sealed
        typed: InstanceState | EndpointState = state
        box = self._box(host_id)
        if kind == "endpoint" and isinstance(typed, EndpointState):
            for worker in typed.live_workers.values():
                if worker.placement.host_id == host_id:
                    name = token_secret(worker.id)
                    token = self._tokens.mint(typed.id, worker.id)
                    sealed[name] = box.seal(token, secret_bound_to(host_id, name))
        auth_id = typed.container.registry_auth_id
        if auth_id:
            credentials = await self._registry_auth(auth_id, typed.owner_id)
            if credentials is not None:
                name = registry_secret(auth_id)
                sealed[name] = box.seal(
                    _encode(credentials).decode(), secret_bound_to(host_id, name)
                )
        return sealed

    async def _registry_auth(self, auth_id: str, owner_id: str) -> SealedRegistryAuth | None:
        """None when the credential is gone or not the owner's: the pull goes unauthenticated
        and, for a private image, fails with a reason the customer can act on."""
        events = await self._store.load(AggregateRef("registry_auth", auth_id))
        state = REGISTRY_AUTH.fold(None, events)
        if not isinstance(state, RegistryAuthState) or state.deleted or state.owner_id != owner_id:
            return None
        try:
            password = self._master_box.open(state.password_ciphertext, sealed_for(auth_id))
        except SecretBoxError:
            return None
        return SealedRegistryAuth(owner_id=owner_id, username=state.username, password=password)
