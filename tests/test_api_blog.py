"""The routes that need no token: GET /blog/posts, /blog/posts/{slug} (posts published with the
CLI), GET /health, and the API docs at /docs and /docs/openapi.json."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.api_helpers import assert_error, wait_for
from tests.servers import Stack

SUMMARY_FIELDS = {"slug", "title", "summary", "publishedAt", "updatedAt"}


def _publish(stack: Stack, tmp_path: Path, slug: str, title: str, summary: str, body: str) -> None:
    body_file = tmp_path / f"{slug}-{uuid.uuid4().hex[:6]}.md"
    body_file.write_text(body)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "blog",
            "publish",
            slug,
            "--title",
            title,
            "--summary",
            summary,
            "--body-file",
            str(body_file),
        ],
        env=stack.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _listed(stack: Stack, slug: str) -> dict[str, Any] | None:
    with stack.client() as client:
        response = client.get("/blog/posts")
    assert response.status_code == 200, response.text
    return next((p for p in response.json() if p["slug"] == slug), None)


def test_published_post_is_listed_and_readable_without_a_token(
    stack: Stack, tmp_path: Path
) -> None:
    slug = f"hello-{uuid.uuid4().hex[:8]}"
    body = "# Hello\n\nGPUs for everyone. ✓\n"
    _publish(stack, tmp_path, slug, "Hello, world", "Our first post", body)

    # The CLI does not go through the api, so the read model catches up on its own time.
    summary = wait_for(lambda: _listed(stack, slug), what=f"post {slug} in the list")
    assert set(summary) == SUMMARY_FIELDS
    assert summary["title"] == "Hello, world"
    assert summary["summary"] == "Our first post"
    assert "body" not in summary

    with stack.client() as client:
        response = client.get(f"/blog/posts/{slug}")
    assert response.status_code == 200, response.text
    post = response.json()
    assert set(post) == SUMMARY_FIELDS | {"body"}
    assert post["body"] == body
    assert post["title"] == "Hello, world"
    assert post["summary"] == "Our first post"
    assert post["slug"] == slug
    assert post["publishedAt"] == summary["publishedAt"]

    # A token, even a bad one, is not needed and not checked on the public blog.
    with stack.client("garbage") as client:
        assert client.get("/blog/posts").status_code == 200
        assert client.get(f"/blog/posts/{slug}").json()["body"] == body


def test_republishing_updates_the_post(stack: Stack, tmp_path: Path) -> None:
    slug = f"update-{uuid.uuid4().hex[:8]}"
    _publish(stack, tmp_path, slug, "First title", "s1", "first body")
    wait_for(lambda: _listed(stack, slug), what=f"post {slug}")
    _publish(stack, tmp_path, slug, "Second title", "s2", "second body")

    def updated() -> dict[str, Any] | None:
        post = _listed(stack, slug)
        return post if post and post["title"] == "Second title" else None

    summary = wait_for(updated, what=f"post {slug} updated")
    assert summary["summary"] == "s2"
    with stack.client() as client:
        posts = client.get("/blog/posts").json()
        post = client.get(f"/blog/posts/{slug}").json()
    assert [p["slug"] for p in posts].count(slug) == 1
    assert post["body"] == "second body"
    assert post["updatedAt"] >= post["publishedAt"]


def test_posts_are_listed_newest_first(stack: Stack, tmp_path: Path) -> None:
    older = f"older-{uuid.uuid4().hex[:8]}"
    newer = f"newer-{uuid.uuid4().hex[:8]}"
    _publish(stack, tmp_path, older, "Older", "", "old")
    wait_for(lambda: _listed(stack, older), what=older)
    _publish(stack, tmp_path, newer, "Newer", "", "new")
    wait_for(lambda: _listed(stack, newer), what=newer)
    with stack.client() as client:
        slugs = [p["slug"] for p in client.get("/blog/posts").json()]
    assert slugs.index(newer) < slugs.index(older)


def test_unknown_post_is_404(stack: Stack) -> None:
    with stack.client() as client:
        for slug in (f"no-such-post-{uuid.uuid4().hex[:6]}", "*", "a>b", "..", "x" * 300):
            assert_error(client.get(f"/blog/posts/{slug}"), 404)


def test_health_reports_dependencies_and_projections(stack: Stack) -> None:
    for token in (None, "garbage"):
        with stack.client(token) as client:
            response = client.get("/health")
        assert response.status_code == 200, response.text
        health = response.json()
        assert health["status"] == "ok"
        assert health["postgres"] == {"ok": True}
        assert health["nats"] == {"ok": True}
        assert "error" not in health
        projections = health["projections"]
        assert isinstance(projections, dict)
        assert {"users", "templates", "registry_auths", "blog_posts"} <= set(projections)
        for name, lag in projections.items():
            assert set(lag) == {"lastSequence", "pending"}, name
            assert isinstance(lag["lastSequence"], int) and lag["lastSequence"] >= 0, name
            assert isinstance(lag["pending"], int) and lag["pending"] >= 0, name
    # The seeded built-in templates are events, so the templates projection has seen some.
    assert projections["templates"]["lastSequence"] > 0


def test_openapi_document_describes_every_route(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/docs/openapi.json")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "GPUWorker API"
    paths = doc["paths"]
    expected = {
        "/auth/signup": {"post"},
        "/auth/login": {"post"},
        "/auth/refresh": {"post"},
        "/me": {"get"},
        "/templates": {"get", "post"},
        "/templates/{template_id}": {"get", "patch", "delete"},
        "/registry-auth": {"get", "post"},
        "/registry-auth/{auth_id}": {"delete"},
        "/blog/posts": {"get"},
        "/blog/posts/{slug}": {"get"},
        "/health": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from {sorted(paths)}"
        assert methods <= set(paths[path]), f"{path}: {sorted(paths[path])}"
    # Request bodies are documented in the seed's camelCase.
    schemas = response.text
    for name in ("imageName", "containerDiskInGb", "volumeMountPath"):
        assert name in schemas, name


def test_docs_page_is_served_without_a_token(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/docs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "GPUWorker API" in response.text
    # Swagger UI with the schema in the page, its assets from the package (no CDN: air-gapped
    # clusters; tests/console/test_browser.py renders it with the network cut off).
    assert '"/instances"' in response.text
    assert "/static/vendor/swagger-ui-" in response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text), response.text
