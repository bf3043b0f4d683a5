"""Drive the FastAPI app in-process (no server, no Redis for paths that never reach it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI

from core.settings import Settings
from server.app import create_app

KEY = "unit-key"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def make_app(tmp_path: Path, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {"redis_url": UNREACHABLE_REDIS, "storage_dir": tmp_path, "api_keys": [KEY]}
    values.update(overrides)
    return create_app(Settings(_env_file=None, **values))


def call(app: FastAPI, method: str, url: str, *, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}) or {})
    if key is not None:
        headers.setdefault("Authorization", f"Key {key}")

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, url, headers=headers, **kwargs)

    return anyio.run(go)
