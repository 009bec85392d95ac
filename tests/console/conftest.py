"""A stack of the console tests' own (new accounts start with no credit, so a zero balance can be
seen; the tests credit the accounts they launch with; the serverless tests' short worker times)
and one headless chromium for them all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.console.browser import CHROMIUM, START_DELAY_S
from tests.serverless_helpers import SERVERLESS_ENV
from tests.servers import Stack, running_stack


@pytest.fixture(scope="module")
def console_stack(session_tmp: Path, pg_base_uri: str) -> Iterator[Stack]:
    tmp = session_tmp / f"console-{id(object())}"
    tmp.mkdir()
    env = {
        **SERVERLESS_ENV,
        "GPUWORKER_SIGNUP_CREDIT": "0",
        "GPUWORKER_SIMULATED_START_DELAY": START_DELAY_S,
    }
    with running_stack(tmp, pg_base_uri, extra_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM}: .ci/setup installs it"
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    made.set_default_timeout(20_000)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
