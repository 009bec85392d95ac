"""Blog posts: published by operators from the CLI, read by anyone."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.blog import PostPublished
from events.envelope import Envelope
from services.deciders.decider import Command, Decider, is_system
from services.errors import BadRequest, Forbidden


class PostState(msgspec.Struct, kw_only=True, frozen=True):
    slug: str
    title: str
    summary: str
    body: str
    published_at: datetime
    updated_at: datetime
    version: int = 0


class PublishPost(Command, frozen=True, kw_only=True):
    title: str
    summary: str
    body: str


def decide(state: PostState | None, command: PublishPost) -> list[msgspec.Struct]:
    if not is_system(command.actor):
        raise Forbidden("only operators publish blog posts")
    if not command.title.strip():
        raise BadRequest("title must not be empty")
    if state is not None and (state.title, state.summary, state.body) == (
        command.title,
        command.summary,
        command.body,
    ):
        return []
    return [PostPublished(title=command.title, summary=command.summary, body=command.body)]


def evolve(state: PostState | None, event: Envelope) -> PostState:
    data = event.data
    if not isinstance(data, PostPublished):
        raise TypeError(f"blog post cannot apply {event.type}")
    if state is None:
        return PostState(
            slug=event.aggregate.id,
            title=data.title,
            summary=data.summary,
            body=data.body,
            published_at=event.occurred_at,
            updated_at=event.occurred_at,
            version=1,
        )
    return msgspec.structs.replace(
        state,
        title=data.title,
        summary=data.summary,
        body=data.body,
        updated_at=event.occurred_at,
        version=state.version + 1,
    )


BLOG_POST = Decider[PostState](
    aggregate_type="blog_post",
    state_type=PostState,
    command_type=PublishPost,
    decide=decide,
    evolve=evolve,
)
