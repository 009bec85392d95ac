"""/blog/posts: the public, read-only blog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import FromPath

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import Page
from services.deciders.blog import PostState
from services.errors import NotFound

BLOG_POSTS = PROJECTIONS["blog_posts"]


class PostSummaryOut(msgspec.Struct, rename="camel", kw_only=True):
    slug: str
    title: str
    summary: str
    published_at: datetime
    updated_at: datetime


class PostOut(PostSummaryOut, kw_only=True):
    body: str


class BlogController(Controller):
    path = "/blog/posts"
    tags = ["blog"]

    @get("/", summary="List blog posts, newest first (paged: see `Link`)")
    async def list_posts(
        self,
        request: Request[Any, Any, Any],
        page: Page,
    ) -> Response[list[PostSummaryOut]]:
        positions, states = await read_models.list_page(
            context_of(request).pool, BLOG_POSTS, None, page, newest_first=True
        )
        summaries = [
            PostSummaryOut(
                slug=s.slug,
                title=s.title,
                summary=s.summary,
                published_at=s.published_at,
                updated_at=s.updated_at,
            )
            for s in states
        ]
        return page.response(request, page.of_rows(positions, summaries))

    @get("/{slug:str}", summary="Read a blog post")
    async def get_post(self, request: Request[Any, Any, Any], slug: FromPath[str]) -> PostOut:
        state: PostState | None = await read_models.get(context_of(request).pool, BLOG_POSTS, slug)
        if state is None:
            raise NotFound(f"no blog post {slug!r}")
        return PostOut(
            slug=state.slug,
            title=state.title,
            summary=state.summary,
            body=state.body,
            published_at=state.published_at,
            updated_at=state.updated_at,
        )
