"""The OpenAPI document as an exact contract: every operation lists, in the seed's error shape, each
error status it can answer, and the content types it really sends.

Litestar documents its own error body (`detail`, `status_code`) and only the 400 of validation;
a client generated from that breaks on the first 404 or 503. The statuses an operation can answer
follow from what it is (authenticated or public, with a body, with a path id, a write, a charge),
so they are derived here in one place after Litestar has built the document, instead of being
repeated on every handler, where a new route would be forgotten."""

from __future__ import annotations

import re
from collections.abc import Iterator

from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)

from services.errors import ERROR_TYPES

ERROR_SCHEMA = "Error"

WORKER_SCHEME = "WorkerToken"

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

_WRITES = {"post", "put", "patch", "delete"}

# Creating or growing what is billed checks the balance and the spend limits first (402).
_CHARGED = re.compile(r"^/(instances|volumes|endpoints|v2)(/|$)")

# Connection and attempt limits per user (429): login throttling, live log streams.
_LIMITED = re.compile(r"^/auth/|/logs$")

_WHY = {
    400: "The request is invalid; the message names the field",
    401: "Missing, expired or revoked credentials",
    402: "The balance, the monthly budget or the hourly spend limit does not allow it",
    403: "Not allowed on this resource (a built-in template, for one)",
    404: "No such resource, or it is another account's",
    405: "Method not allowed on this path",
    409: "Conflicts with the resource's state, a quota, or an Idempotency-Key in use",
    413: "The request body is larger than this route accepts",
    429: "Too many attempts or open streams; retry after `Retry-After` seconds",
    503: "A dependency (PostgreSQL, NATS, the host's agent) is unavailable; retry shortly",
}


def error_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error"],
        properties={
            "error": Schema(
                type=OpenAPIType.OBJECT,
                required=["code", "type", "message"],
                properties={
                    "code": Schema(type=OpenAPIType.INTEGER),
                    "type": Schema(type=OpenAPIType.STRING, enum=sorted(set(ERROR_TYPES.values()))),
                    "message": Schema(type=OpenAPIType.STRING),
                },
            )
        },
        description='Every error, from every layer: `{"error": {"code", "type", "message"}}`',
    )


def operations(openapi: OpenAPI) -> Iterator[tuple[str, str, Operation]]:
    for path, item in (openapi.paths or {}).items():
        for method in _METHODS:
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                yield path, method, operation


def error_statuses(path: str, method: str, operation: Operation, public: bool) -> set[int]:
    """What can go wrong for this operation, from what it is."""
    statuses = {503}
    # Public routes that check credentials of their own: sign-in, refresh, the worker protocol.
    if not public or path.startswith(("/worker/", "/auth/")):
        statuses.add(401)
    if operation.parameters or operation.request_body is not None:
        statuses.add(400)
    if operation.request_body is not None:
        statuses.add(413)
    if "{" in path:
        statuses.add(404)
    if method in _WRITES:
        statuses.add(409)
        if not public:
            statuses.add(403)
        if _CHARGED.search(path) and method in ("post", "patch"):
            statuses.add(402)
    if _LIMITED.search(path):
        statuses.add(429)
    return statuses


# Routes whose success is not JSON, or JSON that Litestar cannot see (pre-encoded bytes).
_SUCCESS_CONTENT: dict[tuple[str, str], dict[str, Schema]] = {
    ("/billing/export", "get"): {
        "text/csv": Schema(type=OpenAPIType.STRING),
        "application/x-ndjson": Schema(type=OpenAPIType.STRING),
    },
    ("/metrics", "get"): {"text/plain": Schema(type=OpenAPIType.STRING)},
    ("/docs/asyncapi.json", "get"): {"application/json": Schema(type=OpenAPIType.OBJECT)},
}


def document_contract(openapi: OpenAPI, public_paths: list[str]) -> None:
    """Rewrites `openapi` in place: the seed's error shape for every error status, the real content
    types of the routes that are not plain JSON, and no security requirement on the routes that
    take none (sign-in, health, the docs; the worker protocol has its own token)."""
    components = openapi.components
    if not isinstance(components, Components):
        components = openapi.components = Components()
    components.schemas[ERROR_SCHEMA] = error_schema()
    schemes = components.security_schemes or {}
    schemes.setdefault(
        WORKER_SCHEME,
        SecurityScheme(
            type="apiKey",
            name="Authorization",
            security_scheme_in="header",
            description="The worker's own token, given to it in `RUNPOD_AI_API_KEY`, sent raw",
        ),
    )
    components.security_schemes = schemes
    public = [re.compile(p) for p in public_paths]
    body = {
        "application/json": OpenAPIMediaType(
            schema=Reference(f"#/components/schemas/{ERROR_SCHEMA}")
        )
    }
    for path, method, operation in operations(openapi):
        is_public = any(p.search(path) for p in public)
        if path.startswith("/worker/"):
            operation.security = [{WORKER_SCHEME: []}]
        elif is_public:
            operation.security = []
        responses = operation.responses or {}
        for litestar_error in [s for s in responses if s[:1] in ("4", "5")]:
            del responses[litestar_error]
        for status in sorted(error_statuses(path, method, operation, is_public)):
            responses[str(status)] = OpenAPIResponse(description=_WHY[status], content=body)
        operation.responses = responses
        success = _SUCCESS_CONTENT.get((path, method))
        if success is not None:
            for code, response in responses.items():
                if code.startswith("2") and isinstance(response, OpenAPIResponse):
                    response.content = {t: OpenAPIMediaType(schema=s) for t, s in success.items()}
