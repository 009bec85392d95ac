"""Sends commands to the decider runners over NATS request/reply; fails fast with 503."""

from __future__ import annotations

import time

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from events.subjects import command_subject
from services.command_wire import CommandEnvelope, Reply
from services.deciders.decider import Command
from services.errors import ServiceUnavailable, from_body


class CommandBus:
    def __init__(self, nc: NatsClient, timeout_s: float) -> None:
        self._nc = nc
        self._timeout = timeout_s
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(Reply).decode

    async def send(
        self,
        aggregate_type: str,
        aggregate_id: str,
        command: Command,
        correlation_id: str,
        command_id: str | None = None,
        source: str | None = None,
    ) -> Reply:
        """A user's command, on the api's subject for the aggregate type; `source` is the client's
        address, for the audit log."""
        return await self.send_on(
            command_subject(aggregate_type),
            aggregate_id,
            command,
            correlation_id,
            command_id,
            source,
        )

    async def send_on(
        self,
        subject: str,
        aggregate_id: str,
        command: Command,
        correlation_id: str,
        command_id: str | None = None,
        source: str | None = None,
    ) -> Reply:
        """A command on the subject of the sender's own channel (an agent's, an operator's)."""
        if not self._nc.is_connected:
            raise ServiceUnavailable(
                "the message bus (NATS) is unreachable; nothing was changed, retry shortly"
            )
        # The deciders never apply it after we stop waiting for their answer.
        envelope = CommandEnvelope.wrap(
            aggregate_id, command, correlation_id, command_id, time.time() + self._timeout, source
        )
        try:
            msg = await self._nc.request(subject, self._encode(envelope), timeout=self._timeout)
        except nats.errors.NoRespondersError:
            raise ServiceUnavailable(
                "no decider runner is accepting commands; nothing was changed, retry shortly"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise ServiceUnavailable(
                f"the deciders did not answer within {self._timeout:g}s; the change may or may"
                " not have been applied: read the resource before retrying"
            ) from None
        except nats.errors.Error as exc:
            raise ServiceUnavailable(f"the message bus failed: {exc}; retry shortly") from None
        reply = self._decode(msg.data)
        if reply.error is not None:
            raise from_body(reply.error)
        return reply
