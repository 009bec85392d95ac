"""An agent's work, read from its host's own subjects of the WORK stream
(services/processes/host_work_router.py), never from the event stream.

The states arrive into the same `AggregateFollower`s the agent keeps (their `offer`: an older
state never replaces a newer one, whichever way it came). The secrets sealed for the host are
opened only when used: a registry password just before a pull, a worker's token when its
container is made."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from events.subjects import WORK_STREAM, parse_work_subject, work_consumer, work_filter
from projections.ordered_pull import OrderedPull
from services.agent.runtime import RegistryCredentials
from services.aggregate_follower import AggregateFollower
from services.host_work_wire import (
    SealedRegistryAuth,
    WorkItem,
    registry_secret,
    secret_bound_to,
    token_secret,
)
from services.security.host_keys import HostKeys
from services.security.secret_box import SecretBoxError

log = logging.getLogger("gpuworker.agent.work")

_decode_item = msgspec.json.Decoder(WorkItem).decode
_decode_auth = msgspec.json.Decoder(SealedRegistryAuth).decode


class HostWorkFeed:
    def __init__(
        self, nc: NatsClient, host_id: str, keys: HostKeys | None, fleet: bool = False
    ) -> None:
        self._nc = nc
        self._host_id = host_id
        self._filter = work_filter(host_id, fleet)
        self._keys = keys
        self._followers: dict[str, AggregateFollower[Any]] = {}
        # (host, secret name) -> sealed value, and which names each aggregate's item brought.
        self._sealed: dict[tuple[str, str], str] = {}
        self._names: dict[tuple[str, str, str], list[str]] = {}
        self._pull: OrderedPull | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, aggregate_type: str, follower: AggregateFollower[Any]) -> None:
        self._followers[aggregate_type] = follower

    async def follow(self) -> None:
        """Return once every item stored so far is offered to its follower: never before (the
        agent removes containers it does not know)."""
        delay = 0.2
        while True:
            try:
                await self._open()
                break
            except Exception as exc:  # the stream not made yet, NATS between leaders, …
                log.warning("host work not readable yet (%s); retrying", exc or type(exc).__name__)
                await self._drop_pull()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._task = asyncio.create_task(self._run(), name="host-work-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pull is not None:
            await self._pull.close()
            self._pull = None

    async def _open(self) -> None:
        pull = OrderedPull(
            self._nc,
            [self._filter],
            1,
            stream=WORK_STREAM,
            name=work_consumer(self._host_id),
            last_per_subject=True,
        )
        self._pull = pull
        await pull.open()
        while pull.pending:
            self._apply(await pull.next(5.0))

    async def _drop_pull(self) -> None:
        pull, self._pull = self._pull, None
        if pull is not None:
            with contextlib.suppress(Exception):
                await pull.close()

    async def _run(self) -> None:
        while True:
            try:
                if self._pull is None:
                    await self._open()
                    continue
                self._apply(await self._pull.next(5.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Gap, NATS trouble: read the work again
                log.warning("host work: %s; reading it again", exc)
                await self._drop_pull()
                await asyncio.sleep(0.5)

    def _apply(self, messages: list[Any]) -> None:
        for msg in messages:
            host_id, kind, aggregate_id = parse_work_subject(msg.subject)
            follower = self._followers.get(kind)
            if follower is None:
                continue
            try:
                item = _decode_item(msg.data)
                state = msgspec.json.decode(item.state, type=follower.state_type)
            except msgspec.DecodeError as exc:
                log.warning("host work %s is unreadable: %s", msg.subject, exc)
                continue
            key = (host_id, kind, aggregate_id)
            for name in self._names.pop(key, []):
                self._sealed.pop((host_id, name), None)
            for name, value in item.sealed.items():
                self._sealed[(host_id, name)] = value
            self._names[key] = list(item.sealed)
            follower.offer(aggregate_id, state, item.sequence)

    def _open_secret(self, host_id: str, name: str) -> str | None:
        sealed = self._sealed.get((host_id, name))
        if sealed is None or self._keys is None:
            return None
        try:
            return self._keys.box(host_id).open(sealed, secret_bound_to(host_id, name))
        except (SecretBoxError, ValueError) as exc:
            log.warning("a secret sealed for host %s does not open: %s", host_id, exc)
            return None

    def worker_token(self, host_id: str, worker_id: str) -> str | None:
        return self._open_secret(host_id, token_secret(worker_id))

    def registry_credentials(
        self, host_id: str, auth_id: str, owner_id: str, registry: str | None
    ) -> RegistryCredentials | None:
        opened = self._open_secret(host_id, registry_secret(auth_id))
        if opened is None:
            return None
        auth = _decode_auth(opened)
        if auth.owner_id != owner_id:
            return None
        return RegistryCredentials(
            username=auth.username, password=auth.password, registry=registry
        )
