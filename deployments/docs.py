"""The gateway's /docs: Swagger UI served from the swagger-ui-bundle-v2 wheel, so the page renders with no network
(FastAPI's default page loads Swagger UI from a CDN, which a machine without internet access shows as a blank page).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["DOCS_ASSETS", "mount_docs"]

DOCS_ASSETS = "/docs/assets"


def mount_docs(app: FastAPI) -> None:
    """GET /docs (Swagger UI of app.openapi_url) and its JavaScript, CSS and icon under /docs/assets."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} — API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
                                   swagger_ui_parameters={"persistAuthorization": True})
