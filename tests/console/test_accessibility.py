"""Every console page checked by axe-core (vendored, tests/console/vendor) with no serious or
critical violation, on a desktop screen and on a 390 px phone (where nothing may be wider than the
screen); and the way in and out works from the keyboard alone, with a visible focus."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.console.browser import PHONE, credit, goto, screenshot, serious_violations, sign_up
from tests.instance_helpers import RTX_4090
from tests.servers import Stack

SIGNED_OUT = ["/console/login", "/console/signup"]
SIGNED_IN = [
    "/console/",
    "/console/launch",
    "/console/instances",
    "/console/serverless",
    "/console/volumes",
    "/console/templates",
    "/console/registry-auth",
    "/console/api-keys",
    "/console/billing/instances",
    "/console/billing/serverless",
    "/console/billing/volumes",
    "/console/audit",
    "/console/instances/00000000-0000-0000-0000-000000000000",
]


@pytest.fixture(scope="module")
def axe_context(browser: Browser) -> Iterator[BrowserContext]:
    # axe-core is injected as an inline script, which the console's CSP refuses (rightly).
    made = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    made.set_default_timeout(20_000)
    yield made
    made.close()


@pytest.fixture(scope="module")
def signed_in(axe_context: BrowserContext, console_stack: Stack) -> Iterator[dict[str, str]]:
    """A customer with an instance and an endpoint, so their pages have rows; their page paths."""
    page = axe_context.new_page()
    credit(console_stack, sign_up(page, console_stack))
    goto(page, f"{console_stack.url}/console/launch")
    page.locator(f'input[name="gpuTypeId"][value="{RTX_4090}"]').check()
    page.get_by_label("Name", exact=True).fill("axe")
    page.get_by_label("Template", exact=True).select_option("busybox-smoke")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"/console/instances/[0-9a-f-]{36}$"))
    instance = page.url.removeprefix(console_stack.url)
    goto(page, f"{console_stack.url}/console/serverless")
    page.get_by_label("Name", exact=True).fill("echo")
    page.get_by_label("Template", exact=True).select_option("busybox-smoke")
    page.get_by_role("button", name="Create endpoint").click()
    page.wait_for_url(re.compile(r"/console/serverless/[0-9a-f-]{36}$"))
    endpoint = page.url.removeprefix(console_stack.url)
    page.close()
    yield {"instance": instance, "endpoint": endpoint}


def _name(path: str) -> str:
    return path.strip("/").replace("console", "").strip("/").replace("/", "-")[:40] or "dashboard"


@pytest.mark.parametrize("path", SIGNED_OUT)
def test_sign_in_pages_have_no_serious_violations(
    browser: Browser, console_stack: Stack, path: str
) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        goto(page, f"{console_stack.url}{path}")
        assert serious_violations(page) == []
        screenshot(page, f"a11y-{_name(path)}")
    finally:
        context.close()


@pytest.mark.parametrize("path", [*SIGNED_IN, "instance", "endpoint"])
def test_console_pages_have_no_serious_violations(
    axe_context: BrowserContext, console_stack: Stack, signed_in: dict[str, str], path: str
) -> None:
    path = signed_in.get(path, path)
    page = axe_context.new_page()
    try:
        goto(page, f"{console_stack.url}{path}")
        expect(page.locator("h1")).to_be_visible()
        assert serious_violations(page) == []
        screenshot(page, f"a11y-{_name(path)}")
    finally:
        page.close()


@pytest.mark.parametrize("path", ["/console/", "/console/launch", "/console/instances", "instance"])
def test_pages_fit_a_phone(
    browser: Browser,
    console_stack: Stack,
    signed_in: dict[str, str],
    axe_context: BrowserContext,
    path: str,
) -> None:
    path = signed_in.get(path, path)
    phone = browser.new_context(
        viewport=PHONE, bypass_csp=True, storage_state=axe_context.storage_state()
    )
    try:
        page = phone.new_page()
        goto(page, f"{console_stack.url}{path}")
        expect(page.locator("h1")).to_be_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        assert serious_violations(page) == []
        screenshot(page, f"phone-{_name(path)}")
    finally:
        phone.close()


def _tab_to(page: Page, element_id: str) -> None:
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == element_id:
            outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"#{element_id} shows no focus"
            return
    raise AssertionError(f"Tab never reached #{element_id}")


def test_log_out_and_back_in_with_the_keyboard_alone(page: Page, console_stack: Stack) -> None:
    from tests.api_helpers import PASSWORD

    email = sign_up(page, console_stack)
    session = [c for c in page.context.cookies() if c["name"] == "gpw_session"]
    page.get_by_role("button", name="Log out").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console_stack.url}/console/login")
    # Signed out for good: the old cookie, sent again, is no session (the server ended it).
    page.context.add_cookies(session)  # type: ignore[arg-type]
    goto(page, f"{console_stack.url}/console/launch")
    page.wait_for_url(re.compile(r"/console/login\?next=/console/launch$"))

    _tab_to(page, "email")
    page.keyboard.type(email)
    _tab_to(page, "password")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console_stack.url}/console/launch")
    expect(page.locator("h1")).to_have_text("Launch an instance")
