"""The api's Prometheus request series, for Litestar's routes and what is served ahead of them."""

from __future__ import annotations

from typing import Any

from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import Receive, Scope, Send
from prometheus_client.metrics import MetricWrapperBase

# `group_path`: one series per route template, never one per id.
PROMETHEUS = PrometheusConfig(app_name="gpuworker", group_path=True)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("RouteMetrics records only; it serves nothing")


class RouteMetrics:
    """Records a request served ahead of Litestar in the series Litestar's Prometheus plugin
    keeps (`litestar_requests_total`, `…_request_duration_seconds`, `…_requests_in_progress`,
    `…_requests_error_total`), with the same labels, so a dashboard sees every route alike.
    The labelled children are looked up once per (method, route, status), not per request."""

    def __init__(self) -> None:
        self._plugin = PrometheusMiddleware(app=_no_app, config=PROMETHEUS)
        self._children: dict[tuple[str, str, str, int], Any] = {}

    def _child(self, kind: str, method: str, template: str, status: int) -> Any:
        key = (kind, method, template, status)
        child = self._children.get(key)
        if child is None:
            labels: dict[str, str | int | float] = {
                "method": method,
                "path": template,
                "status_code": status,
                "app_name": PROMETHEUS.app_name,
            }
            metric: MetricWrapperBase = getattr(self._plugin, kind)(labels)
            child = self._children[key] = metric.labels(*labels.values())
        return child

    def started(self, method: str, template: str) -> None:
        self._child("requests_in_progress", method, template, 200).inc()

    def finished(self, method: str, template: str, status: int, duration_s: float) -> None:
        self._child("requests_in_progress", method, template, 200).dec()
        if status >= 500:
            self._child("requests_error_count", method, template, status).inc()
        self._child("request_count", method, template, status).inc()
        self._child("request_time", method, template, status).observe(duration_s)
