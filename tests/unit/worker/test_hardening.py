"""Worker side of issue 8: webhooks re-checked at delivery (SSRF), the stored lifecycle used as is."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from core.requests.api_store import create_request
from core.requests.records import NewRequest
from core.settings import Settings
from core.webhooks.delivery import WebhookSender
from core.webhooks.signing import WebhookSigner
from tests.integration.helpers import WebhookListener

from .fakes import FakePipeline
from .test_tasks import make_runner


def submit(settings: Settings, rid: str, lifecycle: dict[str, Any]) -> None:
    payload = {"prompt": "a lighthouse", "image_size": "square", "num_inference_steps": 10}
    new = NewRequest(rid, "owner-1", settings.endpoint_id, payload, "normal", "http://files.test", lifecycle=lifecycle)
    create_request(redis.Redis.from_url(settings.redis_url), settings, new)


@pytest.fixture
def listener() -> Iterator[WebhookListener]:
    hooks = WebhookListener().start()
    yield hooks
    hooks.stop()


def sender_for(settings: Settings) -> WebhookSender:
    _, store = make_runner(settings, FakePipeline())
    return WebhookSender(settings, signer=lambda: WebhookSigner.shared(store.client, store.keys))


BODY: dict[str, Any] = {"request_id": "r", "status": "OK", "payload": {}}


def send(sender: WebhookSender, url: str, body: dict[str, Any], request_id: str, user_id: str) -> bool:
    """One delivery attempt, on an event loop of its own (as a dispatcher makes it)."""
    return asyncio.run(sender.send(url, body, request_id, user_id))


def test_delivery_refuses_a_loopback_receiver_by_default(
    make_settings: Callable[..., Settings], listener: WebhookListener
) -> None:
    """Submit-time checks can be bypassed (a record written earlier, DNS changed since): delivery checks again."""
    sender = sender_for(make_settings(webhook_allow_private=False))
    assert send(sender, listener.url, BODY, "r", "owner") is False
    assert send(sender, listener.url.replace("127.0.0.1", "localhost"), BODY, "r", "owner") is False
    assert send(sender, "file:///etc/passwd", BODY, "r", "owner") is False
    time.sleep(0.2)
    assert listener.attempts == 0  # nothing reached the receiver


def test_delivery_to_a_private_receiver_when_allowed(
    make_settings: Callable[..., Settings], listener: WebhookListener
) -> None:
    sender = sender_for(make_settings(webhook_allow_private=True))
    assert send(sender, listener.url, BODY, "r", "owner") is True
    assert listener.received.get(timeout=5)["body"] == BODY


def test_a_redirect_is_not_followed(make_settings: Callable[..., Settings], listener: WebhookListener) -> None:
    """A receiver answering 307 towards another address does not get our POST sent there."""
    target = listener.url

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(307)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = sender_for(make_settings(webhook_allow_private=True))
        assert send(sender, f"http://127.0.0.1:{server.server_address[1]}/hook", BODY, "r", "owner") is False
        time.sleep(0.2)
        assert listener.attempts == 0
    finally:
        server.shutdown()
        server.server_close()


def stored_file_meta(settings: Settings, url: str) -> dict[str, Any]:
    token = url.removeprefix("http://files.test/files/").split("/")[0]
    meta: dict[str, Any] = json.loads((settings.storage_dir / token / ".meta.json").read_text())
    return meta


def test_the_worker_uses_the_stored_lifecycle(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(progress_interval_s=0.0)
    runner, store = make_runner(settings, FakePipeline(steps=1))
    submit(settings, "req-ttl", lifecycle={"expiration_duration_seconds": 120})
    before = time.time()
    assert runner.run("req-ttl") == "ok"
    record = store.get("req-ttl")
    assert record is not None and record.result is not None
    meta = stored_file_meta(settings, record.result["images"][0]["url"])
    assert before + 120 <= meta["expires_at"] <= time.time() + 120


@pytest.mark.parametrize("garbage", ["abc", 0, -5, 1e300])
def test_a_malformed_stored_lifecycle_never_fails_the_generation(
    make_settings: Callable[..., Settings], garbage: object
) -> None:
    """Records written before the API validated the header: the image is made and kept (default expiry)."""
    settings = make_settings(progress_interval_s=0.0)
    runner, store = make_runner(settings, FakePipeline(steps=1))
    submit(settings, "req-bad-ttl", lifecycle={"expiration_duration_seconds": garbage})
    assert runner.run("req-bad-ttl") == "ok"
    record = store.get("req-bad-ttl")
    assert record is not None and record.error is None and record.result is not None
    assert stored_file_meta(settings, record.result["images"][0]["url"])["expires_at"] is None
