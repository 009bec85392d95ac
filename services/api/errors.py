"""Every error the app can produce, rendered in the seed's shape.

Routing (404/405), body limits (413), validation (400 naming the field), auth (401), domain errors,
dead dependencies (503) and anything unexpected (500) all pass through here."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import msgspec
import nats.errors
import psycopg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from psycopg_pool import PoolTimeout

from services.api.body_limit import limit_for, too_large
from services.errors import ErrorBody, ErrorResponse, GpuWorkerError, error_type

log = logging.getLogger("gpuworker.api")


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        content=ErrorResponse(ErrorBody(code=code, type=error_type(code), message=message)),
        status_code=code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _public_name(key: str, sent: Collection[str]) -> str:
    """Litestar names a query parameter by its Python name (`instance_id`); the client sent its
    public one (`instanceId`), which is what the message must name."""
    if key in sent:
        return key
    head, *rest = key.split("_")
    camel = head + "".join(part.title() for part in rest)
    return camel if camel in sent else key


def validation_message(exc: ValidationException, sent: Collection[str] = ()) -> str:
    """`sent`: the query parameters' names as the request gave them."""
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        key, message = item.get("key"), str(item.get("message", "is invalid"))
        if "unknown field" in message:
            problems.append(message.replace("Object contains", "request body contains"))
        elif key and item.get("source") == "query":
            problems.append(f"query parameter `{_public_name(key, sent)}`: {message}")
        elif key == "data":
            # A body's own check (`__post_init__`) already names the field.
            named = message.startswith("field `")
            problems.append(message if named else f"request body: {message}")
        elif key:
            problems.append(f"field `{key}`: {message}")
        else:
            problems.append(message)
    if problems:
        return "; ".join(problems)
    detail = str(exc.detail or "")
    if detail.startswith("Validation failed"):
        return "the request is invalid"
    # Litestar reports an undecodable body with msgspec's own words and nothing else.
    return f"request body is not valid JSON: {detail}"


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = exc.status_code
    if isinstance(exc, ValidationException):
        message = validation_message(exc, list(request.query_params))
    elif isinstance(exc, NotAuthorizedException):
        message = (
            f"{exc.detail}; send `Authorization: Bearer <access_token>` from /auth/login,"
            " or `Authorization: Bearer <API key>`"
            if exc.detail
            else "authentication required"
        )
    elif code == 404:
        message = "no such route or resource"
    elif code == 405:
        allowed = (exc.headers or {}).get("allow", "?")
        message = f"method not allowed here; allowed: {allowed}"
    elif code == 413:
        message = too_large(limit_for(request.url.path))
    else:
        message = str(exc.detail)
    headers = {
        k: v for k, v in (exc.headers or {}).items() if k.lower() in ("allow", "retry-after")
    }
    return error_response(code, message, headers or None)


DATABASE_DOWN = "the database (PostgreSQL) is unavailable; retry shortly"
BUS_DOWN = "the message bus (NATS) is unavailable; retry shortly"


def seed_error(exc: Exception, where: str) -> tuple[int, str, dict[str, str] | None]:
    """(status, message, headers) for anything a handler raised but an HTTPException; `where`
    ("METHOD /path") names the request in the log of what was not expected. Shared by Litestar's
    handlers and what is served ahead of them (services/api/worker_front.py)."""
    if isinstance(exc, GpuWorkerError):
        retry_after = getattr(exc, "retry_after_s", None)
        return exc.code, exc.message, {"retry-after": str(retry_after)} if retry_after else None
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        log.warning("PostgreSQL unavailable: %s", type(exc).__name__)
        return 503, DATABASE_DOWN, None
    if isinstance(exc, nats.errors.Error):
        log.warning("NATS unavailable: %s", type(exc).__name__)
        return 503, BUS_DOWN, None
    if isinstance(exc, msgspec.DecodeError | msgspec.ValidationError):
        return 400, f"request body is not valid JSON: {exc}", None
    log.error("unhandled error on %s", where, exc_info=exc)
    return 500, "internal error; it has been logged", None


def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return error_response(*seed_error(exc, f"{request.method} {request.url.path}"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: on_http_exception,
    Exception: on_error,
}
