"""The console in a real browser: Debian's chromium driven by Playwright (its own browser downloads
are never used), against `gpuworker up` on the simulated runtime, and what the tests do with it
(sign up, credit an account as an operator, check a page with axe-core, save screenshots)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from playwright.sync_api import Error, Page, Response, ViewportSize

from tests.api_helpers import PASSWORD
from tests.servers import Stack

CHROMIUM = os.environ.get("GPUWORKER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# Every page's screenshot, for review (build/ is ignored by git); the README shows two of them,
# copied to docs/screenshots/.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
# Long enough that a page opened just after a launch sees the instance before it runs.
START_DELAY_S = "3"
PHONE: ViewportSize = {"width": 390, "height": 844}


def goto(page: Page, url: str) -> Response | None:
    """`page.goto`, once more when chromium gives up because the host's network interfaces
    changed under it (ERR_NETWORK_CHANGED: Docker adding a bridge or veth for other tests on the
    same machine), which says nothing about the console."""
    for attempt in range(3):
        try:
            return page.goto(url)
        except Error as exc:
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def sign_up(page: Page, stack: Stack, name: str = "Ada Lovelace") -> str:
    """A new account made in the sign-up page; the browser is signed in. Returns its email."""
    email = f"console-{uuid.uuid4().hex[:10]}@example.com"
    goto(page, f"{stack.url}/console/signup")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(f"{stack.url}/console/")
    return email


def credit(stack: Stack, email: str, usd: str = "20") -> None:
    """`gpuworker billing credit`, as the operator runs it."""
    command = ["billing", "credit", email, usd, "--reason", "console test"]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *command],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    result: dict[str, Any] = page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})"
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
