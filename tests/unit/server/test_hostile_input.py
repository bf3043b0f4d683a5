"""Hostile input through the real FastAPI app in-process (issue 8, items 1-10).

The ``app`` fixture's Redis is unreachable on purpose: what is asked of it must be answered
(422/404/400/401) from validation alone, before Redis is touched; reaching Redis would answer 503.
Where a request must get past validation, ``open_app`` uses the session's real Redis with a queue
limit of 0, so an accepted input answers 429 (queue full) without enqueueing anything.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from fastapi import FastAPI

from stack.launcher import RedisProcess

from .asgi import KEY, call, make_app

SUBMIT = "/queue/fal-ai/bitdance"
RUN = "/fal-ai/bitdance"
PROXY = "/api/fal/proxy"
NUMERIC_FIELDS = ("guidance_scale", "seed", "num_inference_steps", "num_images")
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return make_app(tmp_path_factory.mktemp("storage"))


@pytest.fixture
def open_app(redis_server: RedisProcess, tmp_path: Path) -> Callable[..., FastAPI]:
    """An app on the real Redis (own key prefix) that validates fully, then refuses to enqueue."""

    def build(**overrides: Any) -> FastAPI:
        values = {"redis_url": redis_server.url, "key_prefix": f"t{uuid.uuid4().hex[:10]}", "max_queue_length": 0}
        return make_app(tmp_path, **{**values, **overrides})

    return build


def strict_json(response: httpx.Response) -> Any:
    """The body as strict JSON: no NaN/Infinity constants, valid UTF-8 (what every client can parse)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in the body")

    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def assert_fal_422(response: httpx.Response, loc_prefix: list[str | int]) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail = strict_json(response)["detail"]
    assert isinstance(detail, list) and detail
    for item in detail:
        assert isinstance(item["loc"], list) and isinstance(item["msg"], str) and isinstance(item["type"], str)
    assert detail[0]["loc"][: len(loc_prefix)] == loc_prefix
    return list(detail)


def post_raw(app: FastAPI, path: str, body: str, **headers: str) -> httpx.Response:
    return call(app, "POST", path, content=body.encode(), headers={"Content-Type": "application/json", **headers})


def routes_for(path: str) -> tuple[str, dict[str, str]]:
    if path == PROXY:
        return PROXY, {"x-fal-target-url": "https://queue.fal.run/fal-ai/bitdance"}
    return path, {}


@pytest.mark.parametrize("route", [SUBMIT, RUN, PROXY])
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_non_finite_numbers_are_a_valid_422(app: FastAPI, route: str, value: str, name: str) -> None:
    path, headers = routes_for(route)
    response = post_raw(app, path, f'{{"prompt": "p", "{name}": {value}}}', **headers)
    assert_fal_422(response, ["body", name])


@pytest.mark.parametrize("route", [SUBMIT, RUN, PROXY])
def test_non_finite_image_size_is_a_valid_422(app: FastAPI, route: str) -> None:
    path, headers = routes_for(route)
    response = post_raw(app, path, '{"prompt": "p", "image_size": {"width": 1e999, "height": NaN}}', **headers)
    detail = assert_fal_422(response, ["body", "image_size"])
    assert {tuple(item["loc"]) for item in detail} == {
        ("body", "image_size", "width"),
        ("body", "image_size", "height"),
    }


@pytest.mark.parametrize("route", [SUBMIT, RUN, PROXY])
@pytest.mark.parametrize("prompt", ["x\\ud800", "\\udfff", "a\\ud83d b"])
def test_lone_surrogates_are_a_valid_422(app: FastAPI, route: str, prompt: str) -> None:
    path, headers = routes_for(route)
    response = post_raw(app, path, f'{{"prompt": "{prompt}"}}', **headers)
    detail = assert_fal_422(response, ["body", "prompt"])
    assert detail[0]["type"] == "string_unicode"


def test_a_surrogate_in_a_rejected_enum_value_is_echoed_safely(app: FastAPI) -> None:
    response = post_raw(app, SUBMIT, '{"prompt": "p", "output_format": "\\ud800", "image_size": "\\udc00"}')
    detail = assert_fal_422(response, ["body"])
    assert {item["loc"][1] for item in detail} == {"output_format", "image_size"}


def test_paired_surrogates_are_text(open_app: Callable[..., FastAPI]) -> None:
    """A correctly escaped emoji is not a lone surrogate: it passes validation."""
    response = post_raw(open_app(), SUBMIT, '{"prompt": "fox \\ud83e\\udd8a"}')
    assert response.status_code == 429  # validation passed; the queue limit of 0 answered


LIFECYCLE_HEADER = "x-fal-object-lifecycle-preference"
BAD_LIFECYCLES = [
    '{"expiration_duration_seconds": 1e309}',
    '{"expiration_duration_seconds": NaN}',
    '{"expiration_duration_seconds": "abc"}',
    '{"expiration_duration_seconds": 0}',
    '{"expiration_duration_seconds": -5}',
    '{"expiration_duration_seconds": 1.5}',
    "[" * 3000,
    '{"a":' * 1000 + "1" + "}" * 1000,
    "not json",
    "[3600]",
    '"3600"',
]


@pytest.mark.parametrize("route", [SUBMIT, RUN, PROXY])
@pytest.mark.parametrize("value", BAD_LIFECYCLES)
def test_bad_lifecycle_header_is_a_422_naming_it(app: FastAPI, route: str, value: str) -> None:
    path, headers = routes_for(route)
    response = call(app, "POST", path, json={"prompt": "p"}, headers={**headers, LIFECYCLE_HEADER: value})
    assert_fal_422(response, ["header", LIFECYCLE_HEADER])


def test_bad_upload_lifecycle_header_is_a_422_naming_it(app: FastAPI) -> None:
    headers = {"x-fal-object-lifecycle": '{"expiration_duration_seconds": -1}'}
    response = call(app, "POST", "/storage/upload/initiate", json={"content_type": "image/png"}, headers=headers)
    assert_fal_422(response, ["header", "x-fal-object-lifecycle"])


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999", "abc"])
def test_bad_start_timeout_is_a_422(app: FastAPI, value: str) -> None:
    response = call(app, "POST", SUBMIT, json={"prompt": "p"}, headers={"x-fal-request-timeout": value})
    assert_fal_422(response, ["header", "x-fal-request-timeout"])


BAD_IDS = [
    "abc",
    f"{uuid.uuid4()}:logs",
    "x%00",
    "x%0d%0aX-Evil:%201",
    "%E2%80%A8",
    "1" * 300,
    str(uuid.uuid4()).upper(),
    "*",
]


@pytest.mark.parametrize("rid", BAD_IDS)
@pytest.mark.parametrize(
    "suffix,method", [("/status", "GET"), ("", "GET"), ("/cancel", "PUT"), ("/status/stream", "GET")]
)
def test_malformed_request_ids_are_404_before_redis(app: FastAPI, rid: str, suffix: str, method: str) -> None:
    response = call(app, method, f"{SUBMIT}/requests/{rid}{suffix}")
    assert response.status_code == 404, response.text  # 503 would mean Redis was asked
    echoed = response.headers["x-fal-request-id"]
    assert str(uuid.UUID(echoed)) == echoed  # a fresh id, never the input


BAD_TARGETS = [
    "http://[::1",
    "http://[::1]:99999/x",
    "https://queue.fal.run:99999/fal-ai/bitdance",
    "ftp://queue.fal.run/fal-ai/bitdance",
    "javascript:alert(1)",
    "//queue.fal.run/fal-ai/bitdance",
    "https://evil.example.com/fal-ai/bitdance",
    "https://fal.run.evil.example/fal-ai/bitdance",
    "",
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_unparsable_or_foreign_proxy_target_is_400(app: FastAPI, target: str) -> None:
    response = call(app, "POST", PROXY, json={"prompt": "p"}, headers={"x-fal-target-url": target})
    assert response.status_code == 400, response.text
    assert strict_json(response)["error_type"] == "bad_request"


@pytest.mark.parametrize("part", ["9" * 300, "0", "-1", "10001", "1e3", "x"])
def test_out_of_range_part_numbers_are_422(app: FastAPI, part: str) -> None:
    response = call(app, "PUT", f"/storage/upload/{'A' * 22}/{part}", content=b"abc", key=None)
    assert_fal_422(response, ["path", "part_number"])


def test_duplicate_or_out_of_range_parts_in_complete_are_422(open_app: Callable[..., FastAPI]) -> None:
    same = {"partNumber": 1, "etag": "e"}
    huge = {"partNumber": 10**300, "etag": "e"}

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=open_app(), raise_app_exceptions=False)
        headers = {"Authorization": f"Key {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
            upload_url = (await client.post("/storage/upload/initiate-multipart", json={})).json()["upload_url"]
            path = urlsplit(upload_url).path + "/complete"
            unknown = f"/storage/upload/{'A' * 22}/complete"
            return [
                await client.post(unknown, json={"parts": [same] * 400}),
                await client.post(path, json={"parts": [same] * 400}),
                await client.post(path, json={"parts": [huge]}),
            ]

    unknown, repeated, out_of_range = anyio.run(go)
    assert unknown.status_code == 404  # the token is checked before the body (issue 19, item 5)
    assert_fal_422(repeated, ["body", "parts"])
    assert_fal_422(out_of_range, ["body", "parts", 0, "partNumber"])


@pytest.mark.parametrize(
    "content_type", ["text/plain\r\nX-Evil: 1", "text/html\n", "image/png\x00", "", "png", "a/b c", "é/x"]
)
def test_malformed_declared_content_type_is_422(app: FastAPI, content_type: str) -> None:
    response = call(app, "POST", "/storage/upload/initiate", json={"content_type": content_type})
    assert_fal_422(response, ["body", "content_type"])


BAD_WEBHOOKS = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "http://127.0.0.1:6379/",
    "http://localhost:8000/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/hook",
    "http://192.168.0.1/hook",
    "http://172.16.0.1/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one number: resolves to loopback
    "http:///hook",
    "http://[::1/hook",
    "http://example.com:99999/hook",
    "http://exa mple.com/hook",
]


@pytest.mark.parametrize("webhook", BAD_WEBHOOKS)
def test_webhook_to_a_non_public_or_bad_url_is_422_by_default(app: FastAPI, webhook: str) -> None:
    response = call(app, "POST", SUBMIT, json={"prompt": "p"}, params={"fal_webhook": webhook})
    assert_fal_422(response, ["query", "fal_webhook"])


def test_private_webhooks_pass_when_allowed(open_app: Callable[..., FastAPI]) -> None:
    app = open_app(webhook_allow_private=True)
    ok = call(app, "POST", SUBMIT, json={"prompt": "p"}, params={"fal_webhook": "http://127.0.0.1:9/hook"})
    assert ok.status_code == 429  # accepted by validation; the queue limit of 0 answered
    bad = call(app, "POST", SUBMIT, json={"prompt": "p"}, params={"fal_webhook": "file:///etc/passwd"})
    assert_fal_422(bad, ["query", "fal_webhook"])  # the scheme is checked all the same


@pytest.mark.parametrize(
    "overrides,needs_key",
    [
        ({}, False),  # loopback (the default host): open, as before
        ({"host": "0.0.0.0"}, True),  # listening beyond loopback: keyed unless said otherwise
        ({"host": "0.0.0.0", "metrics_require_key": False}, False),
        ({"metrics_require_key": True}, True),
    ],
)
def test_metrics_key_requirement(open_app: Callable[..., FastAPI], overrides: dict[str, Any], needs_key: bool) -> None:
    app = open_app(**overrides)  # one Redis call per app: its async client is bound to one event loop
    keyless = call(app, "GET", "/metrics", key=None)
    if needs_key:
        assert keyless.status_code == 401
        assert call(app, "GET", "/metrics", key="wrong").status_code == 401
        answered = call(app, "GET", "/metrics")  # a valid key passes
    else:
        answered = keyless
    assert answered.status_code == 200 and "bitdance_queue_depth" in answered.text


@pytest.mark.parametrize("route", [SUBMIT, RUN, PROXY])
def test_a_prompt_of_too_many_tokens_is_a_422(app: FastAPI, route: str) -> None:
    """Issue 19, item 8: 10,000 x U+1D400 fits the 10,000-character cap but is 40,000 tokens."""
    path, headers = routes_for(route)
    response = post_raw(app, path, json.dumps({"prompt": "\U0001d400" * 10_000}), **headers)
    [item] = assert_fal_422(response, ["body", "prompt"])
    assert item["type"] == "string_too_long" and "10000 tokens" in item["msg"]
    assert len(response.content) < 6_000  # the 40 KB prompt is not echoed back whole (1024 characters)
