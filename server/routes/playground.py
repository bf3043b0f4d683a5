"""The playground page at ``/``: static HTML, CSS and JavaScript shipped in the package, no build step.

The page builds its form from the endpoint's input schema (fal's per-endpoint OpenAPI document) and
runs requests through the queue API like a fal client. ``/playground/config.json`` tells it where
those are and whether the server wants an API key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from core.settings import Settings
from server.deps import settings_of

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
ASSETS_PATH = "/playground/assets"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground_page() -> FileResponse:
    return FileResponse(PLAYGROUND_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/playground/config.json")
async def playground_config(settings: Annotated[Settings, Depends(settings_of)]) -> JSONResponse:
    endpoint = settings.endpoint_id
    return JSONResponse(
        {
            "endpoint_id": endpoint,
            "requires_key": not settings.is_open,
            "queue_submit_url": f"/queue/{endpoint}",
            "openapi_url": f"/api/openapi/queue/openapi.json?endpoint_id={quote(endpoint, safe='')}",
            "input_schema": "BitDanceInput",
        },
        headers={"Cache-Control": "no-cache"},
    )


def playground_assets() -> StaticFiles:
    return StaticFiles(directory=PLAYGROUND_DIR)
