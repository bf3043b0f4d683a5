"""Issue 19, item 5: JSON nested deep, on every route that takes a JSON body, in-process.

Before: a body nested 490 deep made the 422's echo (``json_safe``) recurse past Python's limit, a 500
with 157-315 KB of traceback logged per 1 KB request; 1,000 deep and more, the parser's own
``RecursionError`` became FastAPI's bare 400. Now any depth past ``MAX_JSON_DEPTH`` is fal's 422
(``json_invalid``) and the log gets nothing but the access line; an upload completion checks its
token before it looks at its body. The same through a real server: ``tests/integration/test_hostile_http.py``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from core.logconfig import MAX_TRACEBACK_CHARS, TextFormatter
from server.error_handlers import MAX_ECHO_DEPTH, json_safe
from server.json_bodies import MAX_JSON_DEPTH, nesting_depth_exceeds, parse_bounded_json
from stack.launcher import RedisProcess

from .asgi import KEY, make_app

DEPTHS = (MAX_JSON_DEPTH + 1, 490, 999, 1000, 100_000)
JSON_ROUTES = {
    "submit": ("/queue/fal-ai/bitdance", {}),
    "run": ("/fal-ai/bitdance", {}),
    "proxy": ("/api/fal/proxy", {"x-fal-target-url": "https://queue.fal.run/fal-ai/bitdance"}),
    "initiate": ("/storage/upload/initiate", {}),
}
LOG_BOUND_BYTES = 2_000  # everything logged for one refused request


def nested(depth: int, inside_field: bool) -> bytes:
    deep = "[" * depth + "]" * depth
    return (
        json.dumps({"prompt": "a fox", "image_size": "square"})[:-1] + f', "x": {deep}}}' if inside_field else deep
    ).encode()


@pytest.fixture
def new_app(redis_server: RedisProcess, tmp_path: Path) -> Callable[[], FastAPI]:
    """Apps on one real Redis and key prefix (one per event loop: a Redis pool belongs to its loop)."""
    prefix = f"deep{uuid.uuid4().hex[:8]}"
    return lambda: make_app(tmp_path, redis_url=redis_server.url, key_prefix=prefix, max_queue_length=0)


@pytest.fixture
def app(new_app: Callable[[], FastAPI]) -> FastAPI:
    return new_app()


def post_all(app: FastAPI, requests: list[tuple[str, bytes, dict[str, str]]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Key {KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
            return [await client.post(path, content=body, headers=extra) for path, body, extra in requests]

    return anyio.run(go)


def assert_json_invalid_422(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert len(response.content) < 500
    [item] = response.json()["detail"]
    assert item["type"] == "json_invalid" and item["loc"][0] == "body"
    assert f"deeper than {MAX_JSON_DEPTH}" in item["ctx"]["error"]


@pytest.mark.parametrize("route", sorted(JSON_ROUTES))
@pytest.mark.parametrize("inside_field", [True, False], ids=["in-a-field", "whole-body"])
def test_deep_bodies_are_a_422_with_a_bounded_log(
    app: FastAPI, route: str, inside_field: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path, headers = JSON_ROUTES[route]
    caplog.set_level(logging.DEBUG)
    responses = post_all(app, [(path, nested(depth, inside_field), headers) for depth in DEPTHS])
    for response in responses:
        assert_json_invalid_422(response)  # before: 500 at 490, FastAPI's 400 from 999 on
    logged = sum(len(record.getMessage()) for record in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged < LOG_BOUND_BYTES * len(DEPTHS)


def test_an_upload_completion_checks_its_token_before_its_body(new_app: Callable[[], FastAPI]) -> None:
    initiated = post_all(new_app(), [("/storage/upload/initiate-multipart", b"{}", {})])[0]
    known = httpx.URL(initiated.json()["upload_url"]).path + "/complete"
    unknown = f"/storage/upload/{'A' * 22}/complete"
    requests = [(unknown, nested(depth, False), {}) for depth in DEPTHS]
    requests += [(known, nested(depth, inside), {}) for depth in DEPTHS for inside in (False, True)]
    answers = post_all(new_app(), requests)
    for response in answers[: len(DEPTHS)]:
        assert response.status_code == 404  # before: the body was parsed and validated first (500 at 490)
    for response in answers[len(DEPTHS) :]:
        assert_json_invalid_422(response)


def test_shallow_bodies_still_parse_and_validate(app: FastAPI) -> None:
    body = {"prompt": "a fox", "image_size": {"width": 512, "height": 512}}
    [accepted, invalid] = post_all(
        app,
        [
            ("/queue/fal-ai/bitdance", json.dumps(body).encode(), {}),
            ("/queue/fal-ai/bitdance", json.dumps({**body, "prompt": [[[["x"]]]]}).encode(), {}),
        ],
    )
    assert accepted.status_code == 429  # valid: refused only by this app's queue bound of 0
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_the_depth_bound_and_the_echo_bound() -> None:
    assert parse_bounded_json(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode()) is not None
    assert not nesting_depth_exceeds({"a": [[1], {"b": 2}]}, 3) and nesting_depth_exceeds({"a": [[[]]]}, 3)
    deep: Any = []
    for _ in range(5_000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    echoed = json_safe({"input": deep})
    text = json.dumps(echoed)
    assert text.count("[") == MAX_ECHO_DEPTH - 1 and '"..."' in text


def test_a_traceback_is_logged_bounded() -> None:
    def recurse(n: int) -> int:
        return recurse(n + 1) + 1

    with pytest.raises(RecursionError) as raised:
        recurse(0)
    error = raised.value
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, (type(error), error, error.__traceback__))
    formatted = TextFormatter().format(record)
    assert "RecursionError" in formatted and len(formatted) < MAX_TRACEBACK_CHARS + 200
