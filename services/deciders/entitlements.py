"""Which commands each sender may give, and as whom: checked where a command enters the deciders.

NATS permissions (services/nats_permissions.py) decide who may publish on which subject; this
module decides what a command on that subject may say, so that neither alone has to be perfect:

- `cmd.<aggregate>` comes from the api, on behalf of a signed-in user: a `system:` actor is
  refused there, and so is any aggregate users do not command (hosts, blog posts).
- `cmd.agent.<host>.<aggregate>` comes from that host's agent: only its reports, only as
  `system:agent:<host>`, and a host registers only itself.
- `cmd.operator.<aggregate>` comes from the operators' command line: blog posts and credits, as
  `system:cli`.
- `cmd.billing.<aggregate>` comes from the ledger: stopping what a customer can no longer pay for
  (instances stopped, serverless endpoints held at zero workers), as `system:billing`.

Pure: no I/O, so every rule is a unit test away."""

from __future__ import annotations

import msgspec

from events.subjects import CommandChannel
from services.deciders.decider import agent_actor, is_system
from services.errors import Forbidden

OPERATOR_ACTOR = "system:cli"
BILLING_ACTOR = "system:billing"

# Aggregates (and services such as placement) users command through the api.
API_TARGETS = frozenset(
    {
        "user",
        "email_claim",
        "template",
        "registry_auth",
        "instance",
        "volume",
        "placement",
        "api_key",
        # Serverless: endpoints, jobs (submit, cancel, retry) and the job queue (purge), which
        # the dispatcher answers (services/processes/job_dispatcher.py).
        "endpoint",
        "job",
        "job_queue",
    }
)
# Of the aggregates above, those whose commands the api may send only some of: the rest of the
# job's commands (take, finish, requeue, time out) are the dispatcher's own.
API_COMMANDS = {
    "job": frozenset({"SubmitJob", "CancelJob", "RetryJob"}),
    # The rest of an endpoint's (its workers' placement, stops, reports, billing's suspension)
    # are the platform's.
    "endpoint": frozenset({"CreateEndpoint", "UpdateEndpoint", "DeleteEndpoint"}),
}
# What an agent reports, by aggregate type: command type names (the wire's tag).
AGENT_COMMANDS = {
    "host": frozenset({"RegisterHost"}),
    "instance": frozenset({"ReportObservation"}),
    "volume": frozenset({"ReportVolume"}),
    # A serverless worker's container: running, ended, or never started.
    "endpoint": frozenset({"ReportWorker"}),
}
OPERATOR_COMMANDS = {
    "blog_post": frozenset({"PublishPost"}),
    "user": frozenset({"GrantCredit"}),
}
BILLING_COMMANDS = {
    "instance": frozenset({"StopInstance"}),
    # Serverless endpoints are scaled to zero (and allowed up again once paid for).
    "endpoint": frozenset({"SuspendEndpoint", "ResumeEndpoint"}),
}


class CommandHead(msgspec.Struct, frozen=True):
    """The two fields of any command that say what it is and who gives it."""

    type: str
    actor: str


_decode_head = msgspec.json.Decoder(CommandHead).decode


def head_of(command: bytes) -> CommandHead:
    return _decode_head(command)


def check_entitled(channel: CommandChannel, aggregate_id: str, head: CommandHead) -> None:
    """Raise Forbidden unless the sender the subject names may give this command as this actor."""
    target = channel.aggregate_type
    if channel.sender == "api":
        if is_system(head.actor):
            raise Forbidden(
                f"actor {head.actor!r} is refused on {target} commands from the api:"
                " system actors come only from their own roles' subjects"
            )
        if target not in API_TARGETS:
            raise Forbidden(f"the api does not send {target} commands")
        if target in API_COMMANDS and head.type not in API_COMMANDS[target]:
            raise Forbidden(f"the api does not send {head.type} to {target}")
        return
    if channel.sender == "agent":
        assert channel.host_id is not None  # channel_of always names the host for agents
        expected = agent_actor(channel.host_id)
        if head.actor != expected:
            raise Forbidden(
                f"actor {head.actor!r} is refused on host {channel.host_id}'s subjects;"
                f" its agent reports as {expected!r}"
            )
        if head.type not in AGENT_COMMANDS.get(target, ()):
            raise Forbidden(f"an agent does not send {head.type} to {target}")
        if target == "host" and aggregate_id != channel.host_id:
            raise Forbidden(f"host {channel.host_id}'s agent registers only its own host")
        return
    if channel.sender == "operator":
        if head.actor != OPERATOR_ACTOR:
            raise Forbidden(f"operator commands are given as {OPERATOR_ACTOR!r}")
        if head.type not in OPERATOR_COMMANDS.get(target, ()):
            raise Forbidden(f"operators do not send {head.type} to {target}")
        return
    if channel.sender == "billing":
        if head.actor != BILLING_ACTOR:
            raise Forbidden(f"billing commands are given as {BILLING_ACTOR!r}")
        if head.type not in BILLING_COMMANDS.get(target, ()):
            raise Forbidden(f"the ledger does not send {head.type} to {target}")
        return
    raise Forbidden(f"no sender may use channel {channel.sender!r}")
