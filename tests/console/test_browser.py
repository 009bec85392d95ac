"""The web console in headless chromium against a real stack (simulated runtime): a customer's
whole path from sign-up to the bill, the API key shown once, the balance and capacity messages,
another user's instance, a cross-origin form post, and the API docs with the network cut off."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.console.browser import credit, goto, screenshot, sign_up
from tests.instance_helpers import RTX_4090
from tests.serverless_helpers import sdk_worker
from tests.servers import Stack

SOLD_OUT = "NVIDIA L40S"  # on the rate card, on no host of the stack


def _launch(page: Page, stack: Stack, gpu: str, name: str) -> None:
    goto(page, f"{stack.url}/console/launch")
    page.locator(f'input[name="gpuTypeId"][value="{gpu}"]').check()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Template", exact=True).select_option("busybox-smoke")
    page.get_by_role("button", name="Launch").click()


def test_sign_up_launch_watch_it_run_stop_it_and_see_its_cost(
    page: Page, console_stack: Stack
) -> None:
    email = sign_up(page, console_stack)
    # The session is in cookies no script can read; nothing is kept in the page's storage.
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["gpw_session"]["httpOnly"] and cookies["gpw_session"]["sameSite"] == "Lax"
    assert cookies["gpw_csrf"]["httpOnly"] and cookies["gpw_csrf"]["sameSite"] == "Lax"
    assert page.evaluate("() => [document.cookie, localStorage.length, sessionStorage.length]") == [
        "",
        0,
        0,
    ]
    credit(console_stack, email)
    page.reload()
    expect(page.locator("#balance")).to_have_text("$20.00")

    goto(page, f"{console_stack.url}/console/launch")
    expect(page.get_by_text("sold out").first).to_be_visible()
    page.locator(f'input[name="gpuTypeId"][value="{RTX_4090}"]').check()
    page.get_by_label("GPUs", exact=True).fill("2")
    # The estimate follows the form as it is filled in (two GPUs cost twice one's price).
    expect(page.locator("#estimate")).to_have_text(re.compile(r"^\$1\.\d{3} per hour$"))
    page.get_by_label("Name", exact=True).fill("trainer")
    page.get_by_label("Template", exact=True).select_option("busybox-smoke")
    screenshot(page, "launch")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"/console/instances/[0-9a-f-]{36}$"))
    instance_id = page.url.rsplit("/", 1)[1]

    # Not RUNNING yet when the page is drawn; it becomes RUNNING in this very document.
    status = page.locator('[data-field="status"]')
    expect(status).not_to_have_text("RUNNING")
    page.evaluate("() => { window.stillTheSamePage = true }")
    expect(status).to_have_text("RUNNING", timeout=30_000)
    assert page.evaluate("() => window.stillTheSamePage === true")
    expect(page.get_by_role("button", name="Stop trainer")).to_be_visible()
    screenshot(page, "instance")

    goto(page, f"{console_stack.url}/console/")
    expect(page.locator(f'tr[data-instance="{instance_id}"]')).to_contain_text("RUNNING")
    screenshot(page, "dashboard")

    goto(page, f"{console_stack.url}/console/instances/{instance_id}")
    page.get_by_role("button", name="Stop trainer").click()
    expect(page.locator('[data-field="status"]')).to_have_text("STOPPED", timeout=30_000)
    expect(page.get_by_role("button", name="Start trainer")).to_be_visible()

    goto(page, f"{console_stack.url}/console/billing/instances?grouping=instanceId")
    row = page.locator("#billing-records tr", has=page.locator(f'a[href$="{instance_id}"]'))
    expect(row.first).to_be_visible()
    amounts = [float(t.strip("$")) for t in row.locator("td.num").all_inner_texts()]
    assert sum(amounts) > 0, amounts
    screenshot(page, "billing")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.endswith(".csv"), download.value.suggested_filename
    exported = Path(download.value.path()).read_text()
    assert "console test" in exported, exported  # the operator's credit, with its reason


def test_an_api_key_is_shown_once_and_stops_working_when_revoked(
    page: Page, console_stack: Stack
) -> None:
    sign_up(page, console_stack)
    goto(page, f"{console_stack.url}/console/api-keys")
    page.get_by_label("Name", exact=True).fill("ci")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").input_value()
    assert key.startswith("gpw_"), key
    screenshot(page, "api-key-created")
    with httpx.Client(base_url=console_stack.url, timeout=30) as client:
        assert client.get("/me", headers={"authorization": f"Bearer {key}"}).status_code == 200

        goto(page, f"{console_stack.url}/console/api-keys")
        assert key not in page.content()
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Revoke ci").click()
        expect(page.get_by_text("No API keys.")).to_be_visible()
        assert client.get("/me", headers={"authorization": f"Bearer {key}"}).status_code == 401


def test_zero_balance_and_sold_out_are_told_in_the_page(page: Page, console_stack: Stack) -> None:
    email = sign_up(page, console_stack)
    _launch(page, console_stack, RTX_4090, "broke")
    expect(page.get_by_role("alert")).to_contain_text("your balance is $0.000000: add credit")
    screenshot(page, "launch-zero-balance")

    credit(console_stack, email)
    _launch(page, console_stack, SOLD_OUT, "hopeful")
    expect(page.get_by_role("alert")).to_contain_text("no capacity")
    expect(page.get_by_role("alert")).to_contain_text(SOLD_OUT)
    screenshot(page, "launch-sold-out")


def test_another_users_instance_is_not_found(browser: Browser, console_stack: Stack) -> None:
    owner = browser.new_context()
    stranger = browser.new_context()
    try:
        mine = owner.new_page()
        credit(console_stack, sign_up(mine, console_stack, "Owner"))
        _launch(mine, console_stack, RTX_4090, "private")
        mine.wait_for_url(re.compile(r"/console/instances/[0-9a-f-]{36}$"))
        expect(mine.locator("h1")).to_have_text("private")

        theirs = stranger.new_page()
        sign_up(theirs, console_stack, "Stranger")
        response = goto(theirs, mine.url)
        assert response is not None and response.status == 404
        expect(theirs.locator("h1")).to_have_text("Not found")
        expect(theirs.get_by_role("alert")).to_have_text("instance not found")
        assert "private" not in theirs.content()
    finally:
        owner.close()
        stranger.close()


class _Attacker(BaseHTTPRequestHandler):
    """A page on another origin (another port of 127.0.0.1: the same site, so SameSite=Lax still
    sends the session cookie) that posts a form to the console as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/console/api-keys">'
            '<input name="name" value="stolen"><input name="_csrf_token" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def attacker(console_stack: Stack) -> Iterator[str]:
    handler = type("Handler", (_Attacker,), {"target": console_stack.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_form_posted_from_another_origin_is_refused(
    page: Page, console_stack: Stack, attacker: str
) -> None:
    sign_up(page, console_stack)
    with page.expect_navigation(url=f"{console_stack.url}/console/api-keys"):
        goto(page, attacker)
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.get_by_role("alert")).to_contain_text("it came from another site")
    goto(page, f"{console_stack.url}/console/api-keys")
    expect(page.get_by_text("No API keys.")).to_be_visible()


def test_the_api_docs_render_with_the_network_cut_off(page: Page, console_stack: Stack) -> None:
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        if route.request.url.startswith(console_stack.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", only_here)
    for path in ("/docs", "/docs/swagger"):
        goto(page, f"{console_stack.url}{path}")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("GPUWorker API")
        expect(page.locator(".opblock-tag").first).to_be_visible()
    screenshot(page, "docs")
    assert elsewhere == [], elsewhere


def test_a_refused_form_shows_the_apis_words_and_what_was_typed(
    page: Page, console_stack: Stack
) -> None:
    credit(console_stack, sign_up(page, console_stack))
    goto(page, f"{console_stack.url}/console/templates")
    page.get_by_label("Name", exact=True).fill("mine")
    page.get_by_label("Image", exact=True).fill("UPPER CASE is no image")
    page.get_by_role("button", name="Create template").click()
    expect(page.get_by_role("alert")).to_contain_text("field `imageName`")
    expect(page.get_by_label("Image", exact=True)).to_have_value("UPPER CASE is no image")

    page.get_by_label("Image", exact=True).fill("local/busybox:latest")
    page.get_by_role("button", name="Create template").click()
    page.wait_for_url(f"{console_stack.url}/console/templates")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete mine").click()
    expect(page.get_by_role("button", name="Delete mine")).to_have_count(0)

    goto(page, f"{console_stack.url}/console/volumes")
    page.get_by_label("Name", exact=True).fill("datasets")
    page.get_by_label("Size, GB", exact=True).fill("10")
    page.get_by_role("button", name="Create volume").click()
    expect(page.locator("td", has_text="datasets")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete datasets").click()
    page.wait_for_url(f"{console_stack.url}/console/volumes")


def test_the_job_tester_runs_a_job_on_a_real_sdk_worker(
    page: Page, console_stack: Stack, tmp_path: Path
) -> None:
    credit(console_stack, sign_up(page, console_stack))
    goto(page, f"{console_stack.url}/console/serverless")
    page.get_by_label("Name", exact=True).fill("echo")
    page.get_by_label("Template", exact=True).select_option("busybox-smoke")
    page.get_by_role("button", name="Create endpoint").click()
    page.wait_for_url(re.compile(r"/console/serverless/[0-9a-f-]{36}$"))
    endpoint_id = page.url.rsplit("/", 1)[1]
    snippet = page.locator("#sdk-snippet").inner_text()
    assert f'runpod.Endpoint("{endpoint_id}")' in snippet, snippet
    endpoint_page = page.url

    goto(page, f"{console_stack.url}/console/api-keys")
    page.get_by_label("Name", exact=True).fill("sdk")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").input_value()
    goto(page, endpoint_page)

    with sdk_worker(console_stack, {"id": endpoint_id, "version": 1}, tmp_path, "w-console"):
        # The snippet as a customer pastes it, with their key: it runs a job.
        placeholder = "<an API key from the API keys page>"
        assert placeholder in snippet, snippet
        ran = subprocess.run(
            [sys.executable, "-c", snippet.replace(placeholder, key)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert "'prompt': 'hello'" in ran.stdout and "w-console" in ran.stdout, ran.stdout

        page.get_by_label("Input (JSON)").fill('{"prompt": "hello from the console"}')
        page.get_by_role("button", name="Run").click()
        output = page.locator("#job-output")
        expect(output).to_contain_text('"status": "COMPLETED"', timeout=60_000)
        expect(output).to_contain_text('"prompt": "hello from the console"')
        expect(output).to_contain_text('"worker": "w-console"')
    screenshot(page, "endpoint")
