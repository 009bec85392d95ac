"""The console's one way to read and change anything: the REST API's own route handlers.

A page is a view over what a REST route answers, so no rule (a check, a price, who may see what,
which actions an instance offers) exists twice. The handlers are the ones Litestar registered
(bound to their controllers), found by method and path template, and called with the page's own
request: its user is the session's, set by the console's authentication, so every ownership check
and every error is the REST API's. A route that answers a page of a list answers JSON bytes; they
are decoded here into the route's own response Structs."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec
from litestar import Litestar, Request, Response
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from services.api.pagination import MAX_LIMIT, PageQuery

T = TypeVar("T")


class RestRoutes:
    """Every REST handler of `app` by (method, path template), e.g. ("POST", "/instances")."""

    def __init__(self, app: Litestar) -> None:
        self._handlers: dict[tuple[str, str], HTTPRouteHandler] = {}
        for route in app.routes:
            if not isinstance(route, HTTPRoute) or route.path.startswith("/console"):
                continue
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    self._handlers[(method, route.path)] = handler

    async def call(
        self,
        method: str,
        path: str,
        request: Request[Any, Any, Any],
        returns: type[T],
        **kwargs: Any,
    ) -> T:
        """What the route's handler returns for `request` and `kwargs` (its parameters by
        name), as `returns`; raises what it raises."""
        result = await self.handler_result(method, path, request, **kwargs)
        if isinstance(result, Response):
            body = result.content
            return msgspec.json.decode(body if isinstance(body, bytes) else b"null", type=returns)
        return msgspec.convert(result, returns, from_attributes=True)

    async def handler_result(
        self, method: str, path: str, request: Request[Any, Any, Any], **kwargs: Any
    ) -> Any:
        """The handler's own return value (a Struct, a Response, a Stream, …)."""
        handler = self._handlers.get((method, path))
        if handler is None:
            raise LookupError(f"no REST route {method} {path}")
        return await handler.fn(request=request, **kwargs)

    async def listed_page(
        self,
        path: str,
        request: Request[Any, Any, Any],
        item: type[T],
        limit: int,
        cursor: str | None = None,
    ) -> tuple[list[T], str | None]:
        """A page of a list route and the cursor of the next page (None on the last)."""
        response = await self.handler_result("GET", path, request, page=PageQuery(limit, cursor))
        assert isinstance(response, Response)
        items = msgspec.json.decode(response.content, type=list[item])  # type: ignore[valid-type]
        link = response.headers.get("link", "")
        target = link.partition("<")[2].partition(">")[0]
        following = parse_qs(urlsplit(target).query).get("cursor", [None])[0]
        return items, following

    async def listed(
        self,
        path: str,
        request: Request[Any, Any, Any],
        item: type[T],
        limit: int = MAX_LIMIT,
        cursor: str | None = None,
        **kwargs: Any,
    ) -> list[T]:
        """One page of a list route (the first `limit` items after `cursor`)."""
        return await self.call(
            "GET",
            path,
            request,
            list[item],  # type: ignore[valid-type]
            page=PageQuery(limit, cursor),
            **kwargs,
        )


def rest_of(request: Request[Any, Any, Any]) -> RestRoutes:
    routes: RestRoutes = request.app.state.console_rest
    return routes
