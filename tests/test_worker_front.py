"""The worker protocol's front (services/api/worker_front.py) takes exactly the requests the
Litestar controller declares, and names them as Litestar does. Its answers over HTTP are tested
with the rest of the protocol, on the real stack (tests/test_jobs_api.py)."""

from __future__ import annotations

import pytest

from services.api.app import create_app
from services.api.worker_front import WorkerRoute, route_of
from services.config import Settings
from services.security.secret_box import generate_key


def _worker_routes(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, set[str]]]:
    """Litestar's worker protocol routes: route name -> (path_format, methods)."""
    # Building the app reads its settings and registers its routes; nothing is contacted.
    monkeypatch.setenv("GPUWORKER_SECRET_KEY", generate_key())
    monkeypatch.setenv("GPUWORKER_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    app = create_app(Settings.from_env())
    routes = {}
    for route in app.routes:
        if route.path.startswith("/worker/v1/"):
            name = route.path_format.split("/")[4]
            methods = {str(method) for method in route.methods} - {"OPTIONS", "HEAD"}
            routes[name] = (route.path_format, methods)
    return routes


def test_the_front_takes_each_route_litestar_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = _worker_routes(monkeypatch)
    assert len(routes) == 6, routes
    for name, (path_format, methods) in routes.items():
        path = path_format.format(endpoint_id="ep-1", worker_id="w-1", job_id="job-9")
        (method,) = methods
        taken = route_of(method, path)
        assert taken is not None, f"{method} {path} is left to Litestar"
        assert (taken.route, taken.endpoint_id, taken.worker_id) == (name, "ep-1", "w-1")
        assert taken.job_id == ("job-9" if "{job_id}" in path_format else None)
        # Its Prometheus series is the one Litestar's plugin keeps for the route.
        assert taken.template == path_format
        for other in {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"} - methods:
            assert route_of(other, path) is None, f"{other} {path} must get Litestar's 405"


@pytest.mark.parametrize(
    "path",
    [
        "/worker/v1/ep-1/job-take/",
        "/worker/v1/ep-1/job-take",
        "/worker/v1//job-take/w-1",
        "/worker/v1/ep-1/job-take/w-1/extra",
        "/worker/v1/ep-1/job-done/w-1",
        "/worker/v1/ep-1/job-done/w-1/job-9/extra",
        "/worker/v1/ep-1/job-done/w-1//",
        "/worker/v1/ep-1/nothing/w-1",
        "/worker/v2/ep-1/job-take/w-1",
        "/endpoints/ep-1/job-take/w-1",
    ],
)
def test_other_paths_are_left_to_litestar(path: str) -> None:
    method = "POST" if "job-done" in path else "GET"
    assert route_of(method, path) is None


def test_a_route_is_named_by_its_template_never_its_ids() -> None:
    taken = route_of("POST", "/worker/v1/ep-1/job-done/w-1/job-9")
    assert taken == WorkerRoute("job-done", "ep-1", "w-1", "job-9")
    assert taken.template == "/worker/v1/{endpoint_id}/job-done/{worker_id}/{job_id}"
