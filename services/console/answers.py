"""How a console form post is answered: Post/Redirect/Get. Done, the browser is sent on with a
303 (so a reload does not post again); refused by the REST API, the same page is drawn again with
the API's status and message, and the form as it was filled in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Response
from litestar.response import Redirect

from services.console.render import SECURITY_HEADERS
from services.errors import GpuWorkerError


def see_other(to: str) -> Redirect:
    return Redirect(to, status_code=303, headers=SECURITY_HEADERS)


async def after_post(
    to: str,
    act: Callable[[], Awaitable[object]],
    again: Callable[[int, str], Awaitable[Response[Any]]],
) -> Response[Any]:
    """`act`, then off to `to`; when it raises the API's error, `again(status, message)`."""
    try:
        await act()
    except GpuWorkerError as exc:
        return await again(exc.code, exc.message)
    return see_other(to)
