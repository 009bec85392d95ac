"""Form posts as the REST API's own request bodies.

A form is turned into the body Struct the REST route takes (its camelCase field names are the
form's), so its checks run exactly once, in the Struct and the handler; a problem reads as the
API says it: "field `gpuCount`: Expected `int` >= 1"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from litestar import Request

from services.api.json_body import NUL_REFUSAL, nul_path
from services.console.guards import CSRF_FIELD
from services.errors import BadRequest

T = TypeVar("T")
MISSING = "Object missing required field "


def api_words(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.gpuCount`" as the API words it; a missing
    field as the form's field left blank."""
    text, _, where = message.rpartition(" - at `$.")
    if not text:
        if message.startswith(MISSING):
            return f"field {message.removeprefix(MISSING)}: required; fill it in"
        return message.replace("Object contains", "the form contains")
    if text.startswith("field `"):
        return text
    return f"field `{where.rstrip('`')}`: {text}"


def body_of(values: Mapping[str, Any], kind: type[T]) -> T:
    """`values` (blank fields left out: the API's defaults apply) as a `kind`; 400 in the API's
    words when they do not make one. A NUL character is refused as the API refuses it in a JSON
    body (services/api/json_body.py): nothing downstream can store it."""
    where = nul_path(dict(values))
    if where is not None:
        raise BadRequest(f"field `{where}`: {NUL_REFUSAL}")
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(api_words(str(exc))) from None


async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The posted form's fields with text in them, without the CSRF token."""
    form = await request.form()
    return {
        key: value.strip()
        for key, value in form.items()
        if key != CSRF_FIELD and isinstance(value, str) and value.strip()
    }


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def env_of(text: str) -> dict[str, str]:
    """`KEY=value` lines; a line without `=` is a 400 naming `env`."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise BadRequest(f"field `env`: line {number} is not KEY=value")
        env[key.strip()] = value
    return env
