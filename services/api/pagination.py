"""Lists page with `limit` and `cursor`; the body stays the JSON array the seed shows, and the next
page's URL is in a `Link: </templates?cursor=…&limit=100>; rel="next"` header (absent on the last
page).

Read models page by keyset on (created_at, id), the order they are listed in: a cursor names the
last row served, not an offset, so rows inserted meanwhile never shift a page nor repeat a row.
The catalog's small in-memory lists (GPU types, data centers) page by id in their listed order.
Cursors are opaque to clients (base64url of the position); a cursor that is not one of ours, or is
for another list, is a 400 naming `cursor`.

A page also stops before MAX_PAGE_BYTES of JSON (it always holds at least one item), so no page,
and no entry of the read cache, grows with the size of what customers store."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import msgspec
from litestar import MediaType, Request, Response
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from services.errors import BadRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_PAGE_BYTES = 4 * 1024 * 1024
MAX_CURSOR_LENGTH = 512

Limit = Annotated[
    int,
    QueryParameter(
        ge=1,
        le=MAX_LIMIT,
        description=f"Items per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); a page may"
        " hold fewer when its items are large.",
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=MAX_CURSOR_LENGTH,
        description="Where the page starts: take it from the previous page's"
        ' `Link: <…>; rel="next"` header.',
    ),
]

Item = TypeVar("Item")


class Position(msgspec.Struct, array_like=True, frozen=True):
    """A read model row's place in its list: the keyset (created_at, id)."""

    created_at: datetime
    id: str


class ListPage(msgspec.Struct, frozen=True):
    """One page, encoded: what the read cache keeps and the response sends."""

    body: bytes
    next_cursor: str | None


def _encode_cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def _decode_cursor(cursor: str | None, kind: type[Item]) -> Item | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise BadRequest(
            "query parameter `cursor`: not a cursor of this list; use the URL of the"
            ' `Link: <…>; rel="next"` header, or start again without a cursor'
        ) from None


def _encode_page(items: Sequence[Any], cursors: Sequence[str], limit: int) -> ListPage:
    """`items` (views, in list order) are up to limit + 1 rows, the extra one only saying that more
    follow; `cursors[i]` is the cursor that starts the list after items[i]."""
    parts: list[bytes] = []
    size = 2
    for item in items[:limit]:
        part = msgspec.json.encode(item)
        if parts and size + len(part) + 1 > MAX_PAGE_BYTES:
            break
        parts.append(part)
        size += len(part) + 1
    more = len(parts) < len(items)
    return ListPage(b"[" + b",".join(parts) + b"]", cursors[len(parts) - 1] if more else None)


class PageQuery(msgspec.Struct, frozen=True):
    """A list route's `limit` and `cursor`, given to every handler that asks for `page`."""

    limit: int
    cursor: str | None

    def after(self) -> Position | None:
        """Where a read model's page starts (None: at the beginning)."""
        return _decode_cursor(self.cursor, Position)

    def of_rows(self, positions: Sequence[Position], items: Sequence[Any]) -> ListPage:
        """A page of read model rows: their positions and views, up to limit + 1 of them."""
        return _encode_page(items, [_encode_cursor(p) for p in positions], self.limit)

    def after_key(self, kind: type[Item]) -> Item | None:
        """Where a page of a list keyed by `kind` (an array-like Struct) starts."""
        return _decode_cursor(self.cursor, kind)

    def of_keys(self, keys: Sequence[Any], items: Sequence[Any]) -> ListPage:
        """A page of rows keyed by `kind` (see `after_key`): their keys and views, up to limit + 1
        of them."""
        return _encode_page(items, [_encode_cursor(k) for k in keys], self.limit)

    def of_list(self, items: Sequence[Item], id_of: Callable[[Item], str]) -> ListPage:
        """A page of a small in-memory list, in its own order, after the item the cursor names."""
        after = _decode_cursor(self.cursor, tuple[str])
        start = 0
        if after is not None:
            ids = [id_of(item) for item in items]
            if after[0] not in ids:
                raise BadRequest(
                    "query parameter `cursor`: the item it starts after is no longer listed;"
                    " start again without a cursor"
                )
            start = ids.index(after[0]) + 1
        window = items[start : start + self.limit + 1]
        return _encode_page(window, [_encode_cursor((id_of(i),)) for i in window], self.limit)

    def response(self, request: Request[Any, Any, Any], page: ListPage) -> Response[Any]:
        headers = None
        if page.next_cursor is not None:
            query = [
                (k, v)
                for k, v in request.query_params.multi_items()
                if k not in ("limit", "cursor")
            ]
            query += [("limit", str(self.limit)), ("cursor", page.next_cursor)]
            # A path-absolute reference (RFC 8288 resolves it against the request's URL): right
            # behind any proxy, whatever scheme and host the api believes it is served on.
            headers = {"link": f'<{request.url.path}?{urlencode(sorted(query))}>; rel="next"'}
        return Response(page.body, media_type=MediaType.JSON, headers=headers)


def _page_query(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> PageQuery:
    return PageQuery(limit, cursor)


# The app's dependencies: a handler that takes `page: Page` gets the validated parameters.
DEPENDENCIES = {"page": Provide(_page_query, sync_to_thread=False)}
Page = NamedDependency[PageQuery]
