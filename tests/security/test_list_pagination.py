"""Finding 11: every list pages with `limit` and `cursor`, the body stays a JSON array, and the next
page's URL is in a `Link: <…>; rel="next"` header; no page grows with what customers store.

60 templates of about 920 kB made one GET /templates answer 53 MiB. These run on a stack of their
own, so the lists hold exactly what the tests put there."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_BYTES
from services.cli import client as cli
from tests.api_helpers import assert_error, signup, template_body
from tests.instance_helpers import A100, create_instance
from tests.servers import Stack, running_stack
from tests.volume_helpers import create_volume


@pytest.fixture(scope="module")
def paging_stack(tmp_path_factory: pytest.TempPathFactory, pg_base_uri: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("paging"), pg_base_uri) as stack:
        yield stack


@pytest.fixture(scope="module")
def token(paging_stack: Stack) -> str:
    access, _, _ = signup(paging_stack)
    return access


def _walk(client: httpx.Client, path: str, limit: int) -> tuple[list[Any], int]:
    """Every item of a list, page by page through the Link headers; (items, pages)."""
    items: list[Any] = []
    pages = 0
    url: str | None = f"{path}?limit={limit}"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list), page
        assert 0 < len(page) <= limit or (pages == 0 and page == []), (url, len(page))
        items += page
        pages += 1
        assert pages <= 1000, "the Link headers never end"
        next_link = response.links.get("next")
        if next_link is None:
            assert "link" not in response.headers, response.headers
            url = None
        else:
            assert response.headers["link"].endswith('>; rel="next"'), response.headers["link"]
            url = next_link["url"]
            assert url.startswith(f"{path}?"), url
    return items, pages


def _key(item: dict[str, Any]) -> str:
    return str(item.get("id") or item["slug"])


def _publish(stack: Stack, tmp_path: Path, slug: str) -> None:
    body = tmp_path / f"{slug}.md"
    body.write_text(f"Post {slug}.")
    publish = ["blog", "publish", slug, "--title", slug, "--body-file", str(body)]
    subprocess.run(
        [sys.executable, "-m", "services.cli.main", *publish],
        env=stack.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_every_list_pages_through_link_headers(
    paging_stack: Stack, token: str, tmp_path: Path
) -> None:
    with paging_stack.client(token) as client:
        for _ in range(3):
            assert client.post("/templates", json=template_body()).status_code == 201
            created = client.post(
                "/registry-auth", json={"name": "r", "username": "u", "password": "p"}
            )
            assert created.status_code == 201, created.text
            key = client.post("/api-keys", json={"name": "k"})
            assert key.status_code == 201, key.text
            create_volume(client)
        for _ in range(2):
            create_instance(client)
    for slug in ("first-post", "second-post", "third-post"):
        _publish(paging_stack, tmp_path, slug)
    with paging_stack.client(token) as client:
        for path in (
            "/templates",
            "/registry-auth",
            "/api-keys",
            "/volumes",
            "/instances",
            "/blog/posts",
            "/gpu-types",
            "/datacenters",
        ):
            whole = client.get(path, params={"limit": MAX_LIMIT})
            assert whole.status_code == 200, whole.text
            assert "link" not in whole.headers, (path, whole.headers)
            expected = [_key(item) for item in whole.json()]
            assert len(expected) >= 2 or path == "/datacenters", (path, expected)
            for limit in (1, 2):
                items, pages = _walk(client, path, limit)
                # Every item once, in the list's order, in as few pages as the limit allows.
                assert [_key(item) for item in items] == expected, path
                assert pages == max(1, -(-len(expected) // limit)), (path, pages)


def test_a_cursor_is_stable_while_rows_are_inserted(paging_stack: Stack) -> None:
    with paging_stack.client(signup(paging_stack)[0]) as client:

        def add(name: str) -> str:
            response = client.post(
                "/registry-auth", json={"name": name, "username": "u", "password": "p"}
            )
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        before = [add(f"before-{i}") for i in range(4)]
        first = client.get("/registry-auth", params={"limit": 2})
        assert [a["id"] for a in first.json()] == before[:2]
        after = [add(f"after-{i}") for i in range(2)]
        seen = [a["id"] for a in first.json()]
        url: str | None = first.links["next"]["url"]
        while url is not None:
            page = client.get(url)
            seen += [a["id"] for a in page.json()]
            url = page.links.get("next", {}).get("url")
        assert seen == before + after


def test_the_default_and_the_largest_page(paging_stack: Stack) -> None:
    with paging_stack.client(signup(paging_stack)[0]) as client:

        def add(i: int) -> None:
            response = client.post(
                "/registry-auth", json={"name": f"r{i}", "username": "u", "password": "p"}
            )
            assert response.status_code == 201, response.text

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(add, range(DEFAULT_LIMIT + 1)))
        default = client.get("/registry-auth")
        assert len(default.json()) == DEFAULT_LIMIT
        rest = client.get(default.links["next"]["url"])
        assert len(rest.json()) == 1 and "link" not in rest.headers
        assert len(client.get("/registry-auth", params={"limit": MAX_LIMIT}).json()) == 101


def test_bad_limit_or_cursor_is_400_naming_it(paging_stack: Stack, token: str) -> None:
    with paging_stack.client(token) as client:
        for path in ("/templates", "/instances", "/gpu-types", "/blog/posts"):
            for bad in ("0", "-1", str(MAX_LIMIT + 1), "many", ""):
                assert_error(client.get(path, params={"limit": bad}), 400, "`limit`")
            for bad in ("nonsense!", "W10", "x" * 600):
                assert_error(client.get(path, params={"cursor": bad}), 400, "`cursor`")
        # A cursor of one list is not a cursor of another kind of list.
        gpu_cursor = client.get("/gpu-types", params={"limit": 1}).links["next"]["url"]
        cursor = httpx.URL(gpu_cursor).params["cursor"]
        assert_error(client.get("/templates", params={"cursor": cursor}), 400, "`cursor`")


def test_a_page_stops_before_its_byte_budget(paging_stack: Stack) -> None:
    # The largest template the api accepts: its readme and every env value at their limits.
    env = {f"VAR_{i}": "v" * 4096 for i in range(64)}
    big = template_body(readme="r" * 65536, env=env)
    count = MAX_PAGE_BYTES // 300_000 + 3
    with paging_stack.client(signup(paging_stack)[0]) as client:
        for _ in range(count):
            response = client.post("/templates", json=big)
            assert response.status_code == 201, response.text
        first = client.get("/templates", params={"limit": MAX_LIMIT})
        assert first.status_code == 200
        assert len(first.content) <= MAX_PAGE_BYTES, len(first.content)
        assert "next" in first.links, "a page over the byte budget must continue in another"
        items, pages = _walk(client, "/templates", MAX_LIMIT)
        assert len([t for t in items if not t["isPublic"]]) == count
        assert pages >= 2


def test_the_cli_follows_link_headers(paging_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    token = signup(paging_stack)[0]
    with paging_stack.client(token) as client:
        instances = [create_instance(client, gpuTypeId=A100)["id"] for _ in range(2)]
        volumes = [create_volume(client)["id"] for _ in range(3)]
    monkeypatch.setenv("GPUWORKER_API_URL", paging_stack.url)
    monkeypatch.setenv("GPUWORKER_TOKEN", token)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(Path("/nonexistent") / uuid.uuid4().hex))
    assert [i["id"] for i in cli.list_all("/instances?limit=1")] == instances
    assert [v["id"] for v in cli.list_all("/volumes?limit=2")] == volumes
