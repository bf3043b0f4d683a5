"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts served from here, so they work offline.

The assets come from the ``fastapi-offline`` package (Swagger UI and Redoc bundles, installed from
PyPI with the project); FastAPI's own pages would load them from a CDN.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
# Redoc's sidebar shows its maker's logo from a CDN, and Swagger UI may show a validator badge: images
# come from here only, so the pages make no request to another host.
LOCAL_IMAGES_ONLY = {"Content-Security-Policy": "img-src 'self' data:"}

router = APIRouter(include_in_schema=False)


def docs_assets() -> StaticFiles:
    """The bundled ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js`` and ``favicon.png``."""
    return StaticFiles(directory=Path(str(files("fastapi_offline") / "static")))


def _title(request: Request) -> str:
    return str(request.app.title)


def _openapi_url(request: Request) -> str:
    return str(request.app.openapi_url or "/openapi.json")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{_title(request)} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
    )
    page.headers.update(LOCAL_IMAGES_ONLY)
    return page


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{_title(request)} - ReDoc",
        redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(LOCAL_IMAGES_ONLY)
    return page
