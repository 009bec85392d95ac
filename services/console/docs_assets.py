"""The API docs (`/docs`, `/docs/swagger`) with every asset served from the package.

Litestar's default render plugins load Scalar (unpinned, `@latest`) and Swagger UI from public
CDNs, so on an air-gapped cluster the docs render blank. Swagger UI is vendored at a pinned
version (services/console/static/vendor/README.md) and serves both paths; Scalar's standalone
bundle is not (4.9 MB, and it calls scalar.com services for its request client)."""

from __future__ import annotations

from litestar.openapi.plugins import SwaggerRenderPlugin

SWAGGER_UI = "/static/vendor/swagger-ui-5.35.0"
# No favicon request at all (Litestar's default is fetched from a CDN).
NO_FAVICON = "<link rel='icon' href='data:,'>"


def docs_render_plugins() -> list[SwaggerRenderPlugin]:
    """The first is served at /docs itself too."""
    return [
        SwaggerRenderPlugin(
            js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_UI}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
            favicon=NO_FAVICON,
            path="/swagger",
        )
    ]
