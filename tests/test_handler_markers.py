"""Every route handler declares its path and query parameters and its body with Litestar's
explicit markers (FromPath, FromQuery, QueryParameter, JSONBody): the inferred style warns in
Litestar 2 and stops working in Litestar 3. The stack tests run the API in a process of its own,
where pytest's `filterwarnings` does not reach, so the app is built here, in this one."""

from __future__ import annotations

import warnings

import pytest

from services.api.app import create_app
from services.config import Settings
from services.security.secret_box import generate_key


def test_building_the_api_warns_of_nothing_deprecated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building the app reads its settings and registers its routes; nothing is contacted.
    monkeypatch.setenv("GPUWORKER_SECRET_KEY", generate_key())
    monkeypatch.setenv("GPUWORKER_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_app(Settings.from_env())
    deprecated = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecated == [], "\n".join(deprecated)
