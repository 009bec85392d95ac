"""How a console page is answered: its template with the layout's context, and the words and
figures people read (money, durations, times), formatted in one place."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template import TemplateConfig

from services.console.guards import ConsoleAuth

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

NAV = [
    ("/console/", "Dashboard"),
    ("/console/launch", "Launch"),
    ("/console/instances", "Instances"),
    ("/console/serverless", "Serverless"),
    ("/console/volumes", "Volumes"),
    ("/console/templates", "Templates"),
    ("/console/registry-auth", "Registry credentials"),
    ("/console/api-keys", "API keys"),
    ("/console/billing", "Billing"),
]


def usd(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{digits}f}"


def micros(value: int | None, digits: int = 4) -> str:
    return usd(None if value is None else value / 1_000_000, digits)


def duration(hours: float | None) -> str:
    """3.5 → "3 h 30 min"; long spans in days."""
    if hours is None:
        return "—"
    minutes = int(hours * 60)
    if minutes >= 48 * 60:
        return f"{minutes // (24 * 60)} days"
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes} min"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(usd=usd, micros=micros, duration=duration, when=when)
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(environment))


# The console's pages are the user's own: never kept by a cache, never framed, no script or
# style from anywhere but here.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self';"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self';"
        " object-src 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def page(
    request: Request[Any, Any, Any], name: str, status_code: int = 200, /, **context: Any
) -> Template:
    auth = request.scope.get("auth")
    return Template(
        template_name=name,
        context={
            "user": auth.user if isinstance(auth, ConsoleAuth) else None,
            "nav": NAV,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
