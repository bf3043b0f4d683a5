"""Auth parsing, URL building, error rendering, routing middleware and proxy target mapping."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from core.errors import (
    AuthenticationError,
    ClientCancelledError,
    RequestNotFoundError,
    RequestTimeoutError,
)
from core.requests.records import is_request_id
from server.auth import ANONYMOUS, KeyRing, key_id_for, parse_authorization
from server.request_ids import name_request
from server.routes.proxy import target_path
from server.urls import Urls, app_id_of, public_base

from .asgi import call, make_app


def test_parse_authorization() -> None:
    assert parse_authorization("Key abc") == "abc"
    assert parse_authorization("key  id:secret ") == "id:secret"
    for bad in (None, "", "Key", "Key   ", "Bearer jwt", "Basic x"):
        with pytest.raises(AuthenticationError):
            parse_authorization(bad)


def test_keyring_accepts_both_key_forms_and_hides_secrets() -> None:
    ring = KeyRing(["plain-key", "kid:ksecret"])
    assert ring.authenticate("Key plain-key").key_id == key_id_for("plain-key")
    assert ring.authenticate("Key kid:ksecret").key_id == "id:kid"
    assert "plain-key" not in key_id_for("plain-key")
    for bad in ("Key other", "Key kid:wrong", "Bearer kid:ksecret", None):
        with pytest.raises(AuthenticationError):
            ring.authenticate(bad)


def test_open_keyring_accepts_anyone() -> None:
    assert KeyRing([]).authenticate(None).key_id == ANONYMOUS


def _request(headers: dict[str, str], scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "scheme": scheme, "headers": raw, "path": "/", "server": ("10.0.0.1", 8000)}
    return Request(scope)


def test_public_base_honours_forwarded_headers() -> None:
    assert public_base(_request({"host": "127.0.0.1:8000"})) == "http://127.0.0.1:8000"
    forwarded = {
        "host": "internal:8000",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "api.example.com, p",
    }
    assert public_base(_request(forwarded)) == "https://api.example.com"
    assert public_base(_request({"host": "x"}), override="https://pub.example/") == "https://pub.example"


def test_request_urls_use_prefix_and_app_id() -> None:
    builder = Urls(base="https://h:8443", queue_prefix="/queue")
    urls = builder.request_urls("fal-ai/bitdance", "r1")
    assert urls == {
        "response_url": "https://h:8443/queue/fal-ai/bitdance/requests/r1",
        "status_url": "https://h:8443/queue/fal-ai/bitdance/requests/r1/status",
        "cancel_url": "https://h:8443/queue/fal-ai/bitdance/requests/r1/cancel",
    }
    assert builder.request_urls("fal-ai/bitdance/sub/path", "r1") == urls  # the endpoint's sub-path is dropped
    assert builder.response_url("fal-ai/bitdance", "r1") == urls["response_url"]
    on_queue_host = Urls(base="https://queue.h", queue_prefix="").request_urls("fal-ai/bitdance", "r1")
    assert on_queue_host["status_url"] == "https://queue.h/fal-ai/bitdance/requests/r1/status"
    assert app_id_of("fal-ai/bitdance/sub/path") == "fal-ai/bitdance"
    assert app_id_of("workflows/me/flow/x") == "workflows/me/flow"
    assert app_id_of(app_id_of("workflows/me/flow/x")) == "workflows/me/flow"


def test_error_rendering_shapes() -> None:
    stored = RequestTimeoutError().to_stored()
    assert stored.status_code == 504
    assert stored.body == {"detail": stored.body["detail"], "error_type": "request_timeout"}
    assert stored.headers["X-Fal-Request-Timeout-Type"] == "user"
    assert stored.headers["X-Fal-Error-Type"] == "request_timeout"
    assert ClientCancelledError().to_stored().status_code == 499
    assert RequestNotFoundError().to_stored().body == {"detail": "Request not found"}


def test_401_without_key_and_request_id_header(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    response = call(app, "GET", "/queue/fal-ai/bitdance/requests/x/status", key=None)
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)
    assert response.headers["x-fal-request-id"]


def test_unknown_endpoint_404_and_trailing_slash_without_redirect(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    response = call(app, "POST", "/queue/fal-ai/other/", json={"prompt": "p"})
    assert response.status_code == 404 and response.json() == {"detail": "Application 'fal-ai/other' not found"}


def test_redis_down_is_503_with_request_id(tmp_path: Path) -> None:
    app = make_app(tmp_path)  # Redis is unreachable
    rid = "764cabcf-b745-4b3e-ae38-1200304cf45b"  # only a well-formed id gets as far as Redis
    response = call(app, "GET", f"/queue/fal-ai/bitdance/requests/{rid}/status")
    assert response.status_code == 503
    assert response.json()["error_type"] == "runner_scheduling_failure"
    assert response.headers["x-fal-request-id"] == rid


def test_unexpected_error_is_sanitized_500(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    RID = "0f0e0d0c-0b0a-4909-8807-060504030201"  # noqa: N806 - a constant of this test

    @app.get("/boom")
    async def boom(request: Request) -> None:
        name_request(request.scope, RID)
        raise KeyError("internal secret")

    response = call(app, "GET", "/boom")
    assert response.status_code == 500
    body = response.json()
    assert body == {"detail": f"Internal server error (request id {RID})", "error_type": "internal_error"}
    assert response.headers["x-fal-request-id"] == RID


def assert_fal_error(response: httpx.Response, status_code: int, detail: str, error_type: str) -> None:
    """fal's error answer, as the one renderer writes it for handlers, middleware and proxy alike."""
    assert response.status_code == status_code
    assert response.json() == {"detail": detail, "error_type": error_type}
    assert response.headers["x-fal-error-type"] == error_type
    assert is_request_id(response.headers["x-fal-request-id"])


def test_body_limit_413(tmp_path: Path) -> None:
    app: FastAPI = make_app(tmp_path, max_body_bytes=100)
    response = call(app, "POST", "/queue/fal-ai/bitdance", content=b"x" * 101)
    assert_fal_error(response, 413, "Request body larger than 100 bytes", "bad_request")

    async def chunks():  # no Content-Length: counted while reading
        for _ in range(3):
            yield b"x" * 50

    response = call(app, "POST", "/queue/fal-ai/bitdance", content=chunks())
    assert_fal_error(response, 413, "Request body larger than 100 bytes", "bad_request")


def test_proxy_target_mapping() -> None:
    scope = {"headers": [(b"host", b"127.0.0.1:8000")]}
    assert target_path("https://queue.fal.run/fal-ai/bitdance?fal_webhook=x", scope) == (
        "/queue/fal-ai/bitdance",
        b"fal_webhook=x",
    )
    assert target_path("https://fal.run/fal-ai/bitdance", scope) == ("/fal-ai/bitdance", b"")
    assert target_path("https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3", scope) == (
        "/storage/upload/initiate",
        b"storage_type=fal-cdn-v3",
    )
    assert target_path("http://127.0.0.1:8000/queue/fal-ai/bitdance/requests/r", scope) == (
        "/queue/fal-ai/bitdance/requests/r",
        b"",
    )
    assert target_path("https://evil.example/x", scope) is None
    assert target_path("http://127.0.0.1:8000/api/fal/proxy", scope) is None


def test_proxy_rejects_missing_or_foreign_target(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    response = call(app, "GET", "/api/fal/proxy")
    assert_fal_error(response, 400, "Invalid request: missing x-fal-target-url header", "bad_request")
    response = call(app, "GET", "/api/fal/proxy", headers={"x-fal-target-url": "https://evil.example/"})
    assert_fal_error(response, 400, "Invalid request: target URL is not an allowed fal host", "bad_request")


def test_proxy_dispatches_to_the_same_handlers(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    headers = {"x-fal-target-url": "https://queue.fal.run/fal-ai/bitdance"}
    response = call(app, "POST", "/api/fal/proxy", json={"prompt": ""}, headers=headers)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_queue_host_maps_to_queue_routes(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    response = call(app, "POST", "/fal-ai/other", json={"prompt": "p"}, headers={"host": "queue.localhost:8000"})
    assert response.status_code == 404
    response = call(app, "POST", "/fal-ai/bitdance/", json={"num_images": 9}, headers={"host": "queue.localhost"})
    assert response.status_code == 422
