"""The console's routes, wired: its pages behind the session and the form guards, its static
files (CSS, ES modules, and the API docs' Swagger UI, vendored), and its errors as pages in words.

Errors a page does not handle itself become an error page with the API's own message; being
signed out sends the browser to the sign-in page and back."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import nats.errors
import psycopg
from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from psycopg_pool import PoolTimeout

from services.api.errors import validation_message
from services.console.guards import (
    SIGN_IN_PATHS,
    ConsoleSession,
    SameOrigin,
    csrf_config,
)
from services.console.pages import (
    api_keys,
    billing,
    dashboard,
    instances,
    launch,
    registry_auth,
    serverless,
    sign_in,
    templates,
    volumes,
)
from services.console.render import STATIC, page
from services.errors import GpuWorkerError

log = logging.getLogger("gpuworker.console")

CROSS_SITE = (
    "This form was not accepted: it came from another site, or its page is too old."
    " Go back, reload the page and try again."
)


def _error_page(request: Request[Any, Any, Any], code: int, message: str) -> Response[Any]:
    return page(request, "error.html", code, code=code, message=message)


def _on_signed_out(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/console/"
    return Redirect(f"/console/login?next={quote(target)}", status_code=303)


def _on_refused(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    return _error_page(request, 403, CROSS_SITE)


def _on_domain_error(request: Request[Any, Any, Any], exc: GpuWorkerError) -> Response[Any]:
    return _error_page(request, exc.code, exc.message)


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        return _error_page(request, 400, validation_message(exc, list(request.query_params)))
    if exc.status_code == 404:
        return _error_page(request, 404, "Not found: there is no such page here.")
    return _error_page(request, exc.status_code, str(exc.detail))


def _on_database_down(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    return _error_page(request, 503, "The database (PostgreSQL) is unavailable; retry shortly.")


def _on_bus_down(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    return _error_page(request, 503, "The message bus (NATS) is unavailable; retry shortly.")


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("console error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(request, 500, "Something went wrong on our side; it has been logged.")


def console_router(jwt_secret: str, https: bool) -> Router:
    pages: list[Any] = [
        dashboard.dashboard,
        sign_in.login_page,
        sign_in.login,
        sign_in.signup_page,
        sign_in.signup,
        sign_in.logout,
        launch.launch_page,
        launch.estimate,
        launch.launch,
        instances.instances_page,
        instances.live,
        instances.instance_page,
        instances.instance_action,
        volumes.volumes_page,
        volumes.create_volume,
        volumes.delete_volume,
        templates.templates_page,
        templates.create_template,
        templates.delete_template,
        registry_auth.registry_auth_page,
        registry_auth.create_registry_auth,
        registry_auth.delete_registry_auth,
        api_keys.api_keys_page,
        api_keys.create_api_key,
        api_keys.revoke_api_key,
        serverless.serverless_page,
        serverless.create_endpoint,
        serverless.endpoint_page,
        serverless.test_job,
        serverless.job_status,
        billing.billing_home,
        billing.billing_export,
        billing.billing_page,
        billing.audit_page,
    ]
    return Router(
        path="/",
        route_handlers=[dashboard.root, *pages],
        include_in_schema=False,
        middleware=[
            SameOrigin(),
            DefineMiddleware(CSRFMiddleware, config=csrf_config(jwt_secret, https)),
            DefineMiddleware(ConsoleSession, exclude=[SIGN_IN_PATHS]),
        ],
        exception_handlers={
            NotAuthorizedException: _on_signed_out,
            PermissionDeniedException: _on_refused,
            GpuWorkerError: _on_domain_error,
            HTTPException: _on_http_error,
            psycopg.OperationalError: _on_database_down,
            PoolTimeout: _on_database_down,
            nats.errors.Error: _on_bus_down,
            Exception: _on_unexpected,
        },
    )


def static_router() -> Router:
    """/static/…: the console's CSS and scripts and the API docs' assets, all from the package.
    They change only with a release, so browsers may keep them for an hour."""
    return create_static_files_router(
        path="/static",
        directories=[STATIC],
        name="static",
        cache_control=CacheControlHeader(max_age=3600, public=True),
        include_in_schema=False,
    )
