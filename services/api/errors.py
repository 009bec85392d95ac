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


def on_domain_error(_request: Request[Any, Any, Any], exc: GpuWorkerError) -> Response[Any]:
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"retry-after": str(retry_after)} if retry_after else None
    return error_response(exc.code, exc.message, headers)


def on_database_down(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("PostgreSQL unavailable: %s", type(exc).__name__)
    return error_response(503, "the database (PostgreSQL) is unavailable; retry shortly")


def on_nats_down(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("NATS unavailable: %s", type(exc).__name__)
    return error_response(503, "the message bus (NATS) is unavailable; retry shortly")


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, msgspec.DecodeError | msgspec.ValidationError):
        return error_response(400, f"request body is not valid JSON: {exc}")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: on_http_exception,
    GpuWorkerError: on_domain_error,
    psycopg.OperationalError: on_database_down,
    PoolTimeout: on_database_down,
    nats.errors.Error: on_nats_down,
    Exception: on_unexpected,
}
