"""Issue 19, item 10, in-process: CORS on an open server, 401 before 404 for keyed files, a full disk.

The disk filling up for real (a tiny tmpfs under a real server) is ``tests/integration/test_disk_full.py``;
here the write fails with ``ENOSPC`` at the file's ``write``, for machines where mounting is not allowed.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.settings import Settings
from core.storage import LocalStorage
from server.auth import key_id_for
from stack.launcher import RedisProcess

from .asgi import KEY, call, make_app

FOREIGN = "https://evil.example"
PREFLIGHT = {
    "Origin": FOREIGN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


def allowed_origin(response: httpx.Response) -> str | None:
    return response.headers.get("access-control-allow-origin")


def test_an_open_server_allows_no_cross_origin_page(tmp_path: Path) -> None:
    """Before: ``*`` everywhere, so any page could drive a keyless loopback server through its visitors."""
    assert Settings(_env_file=None).cors_origins == []  # type: ignore[call-arg]
    open_app = make_app(tmp_path, api_keys=[])
    preflight = call(open_app, "OPTIONS", "/queue/fal-ai/bitdance", headers=PREFLIGHT, key=None)
    assert allowed_origin(preflight) is None
    assert allowed_origin(call(open_app, "GET", "/health/live", headers={"Origin": FOREIGN}, key=None)) is None


def test_keyed_and_configured_servers_keep_cors(tmp_path: Path) -> None:
    keyed = make_app(tmp_path)  # API keys set: a page still needs a key, as with fal
    assert allowed_origin(call(keyed, "OPTIONS", "/queue/fal-ai/bitdance", headers=PREFLIGHT)) == "*"
    chosen = make_app(tmp_path, api_keys=[], cors_allow_origins="https://app.example")
    mine = {**PREFLIGHT, "Origin": "https://app.example"}
    assert allowed_origin(call(chosen, "OPTIONS", "/queue/fal-ai/bitdance", headers=mine, key=None)) == (
        "https://app.example"
    )
    assert allowed_origin(call(chosen, "OPTIONS", "/queue/fal-ai/bitdance", headers=PREFLIGHT, key=None)) is None


def test_keyed_files_answer_401_whether_they_exist_or_not(tmp_path: Path) -> None:
    """Before: 401 for an existing file, 404 for an unknown one, so a keyless caller could tell them apart."""
    app = make_app(tmp_path, files_require_key=True, api_keys=[KEY, "other-key"])
    stored = LocalStorage(tmp_path).put_bytes(b"x", file_name="a.png", content_type="image/png", owner=key_id_for(KEY))
    existing, unknown = stored.url_path, f"/files/{'B' * 22}/a.png"
    for path in (existing, unknown):
        assert call(app, "GET", path, key=None).status_code == 401
        assert call(app, "GET", path, key="wrong").status_code == 401
        assert call(app, "GET", path, key="other-key").status_code == 404  # another key's file: as unknown
    assert call(app, "GET", unknown).status_code == 404
    assert call(app, "GET", existing).content == b"x"


class FullDisk:
    """``anyio.open_file`` whose files take ``room`` bytes, then fail as a full disk does (``ENOSPC``)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.real_open = anyio.open_file

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        handle = await self.real_open(*args, **kwargs)
        write = handle.write
        disk = self

        async def limited_write(data: bytes) -> int:
            if len(data) > disk.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            disk.room -= len(data)
            return int(await write(data))

        handle.write = limited_write  # type: ignore[method-assign]
        return handle


def test_a_full_disk_is_a_507_that_leaves_nothing(
    redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a plain 500, and the staged file stayed behind."""
    monkeypatch.setattr(anyio, "open_file", FullDisk(room=100_000))
    app = make_app(tmp_path, redis_url=redis_server.url, key_prefix="diskfull-unit")

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Key {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
            single = (await client.post("/storage/upload/initiate", json={})).json()["upload_url"]
            multi = (await client.post("/storage/upload/initiate-multipart", json={})).json()["upload_url"]
            whole = await client.put(single, content=b"x" * 300_000)
            return whole, await client.put(f"{multi}/1", content=b"y" * 300_000)

    for response in anyio.run(go):
        assert response.status_code == 507, response.text
        assert response.json()["error_type"] == "insufficient_storage" and response.json()["detail"]
        assert response.headers["x-fal-error-type"] == "insufficient_storage"
    leftovers = [p for p in (tmp_path / ".staging").rglob("*") if p.is_file()]
    assert leftovers == []
    assert [p.name for p in tmp_path.iterdir()] == [".staging"]  # no file folder either
