"""Every URL the upload flow answers is built the same way: with ``BITDANCE_PUBLIC_BASE_URL`` set, the
initiate answer's ``upload_url`` and ``file_url`` and the ``file_url`` that a finished upload answers
(single PUT, multipart completion) all start with it, whatever host the request came in on.

The app runs in-process on the session's real Redis and a storage folder of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from core.settings import Settings
from server.app import create_app
from tests.conftest import KEY_A

PUBLIC_BASE = "https://images.example.com"
INTERNAL_HOST = "internal-api:8000"  # what a reverse proxy in front of the API would send


async def upload_answers(settings: Settings, multipart: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(initiate's answer, the finished upload's answer) of one upload through the app."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Key {KEY_A}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{INTERNAL_HOST}") as client:
            route = "initiate-multipart" if multipart else "initiate"
            initiate = await client.post(
                f"/storage/upload/{route}", json={"content_type": "text/plain", "file_name": "a.txt"}, headers=headers
            )
            assert initiate.status_code == 200, initiate.text
            target = initiate.json()
            # the upload URL names the public host; the request itself goes to the API's own address
            path = httpx.URL(target["upload_url"]).path
            if multipart:
                part = await client.put(f"{path}/1", content=b"hello")
                assert part.status_code == 200, part.text
                finished = await client.post(f"{path}/complete", json={"parts": [{"partNumber": 1, "etag": "x"}]})
            else:
                finished = await client.put(path, content=b"hello")
            assert finished.status_code == 200, finished.text
            return target, finished.json()
    finally:
        await app.state.redis.aclose()
        app.state.sync_redis.close()


@pytest.mark.parametrize("multipart", [False, True], ids=["single", "multipart"])
def test_finished_upload_answers_the_public_file_url(make_settings: Callable[..., Settings], multipart: bool) -> None:
    settings = make_settings(public_base_url=PUBLIC_BASE + "/")
    target, finished = anyio.run(upload_answers, settings, multipart)
    assert target["upload_url"].startswith(PUBLIC_BASE + "/storage/upload/")
    assert target["file_url"].startswith(PUBLIC_BASE + "/files/")
    assert finished["file_url"] == target["file_url"]  # the URL initiate promised, on the public host
    assert finished["size"] == 5


def test_without_a_public_base_url_the_request_host_is_used(make_settings: Callable[..., Settings]) -> None:
    target, finished = anyio.run(upload_answers, make_settings(), False)
    assert target["file_url"].startswith(f"http://{INTERNAL_HOST}/files/")
    assert finished["file_url"] == target["file_url"]
