"""The queue path end to end: real redis-server, uvicorn, worker and the tiny 16x model over HTTP."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from core.webhooks.signing import verify
from tests.conftest import KEY_B, LiveStack

from .helpers import APP, FAST, PATCH_LOG, WebhookListener, status, submit


@dataclass
class Observed:
    """One request watched from submit to completion."""

    submitted: dict[str, Any]
    statuses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    webhooks: WebhookListener | None = None

    _hook: dict[str, Any] | None = None

    def webhook(self) -> dict[str, Any]:
        """The delivered webhook (waited for once, then kept for every test that looks at it)."""
        assert self.webhooks is not None
        if self._hook is None:
            self._hook = self.webhooks.received.get(timeout=30)
        return self._hook

    def seen(self, name: str) -> list[dict[str, Any]]:
        return [body for _, body in self.statuses if body["status"] == name]

    @property
    def final(self) -> dict[str, Any]:
        return self.statuses[-1][1]


@pytest.fixture(scope="module")
def observed(live_stack: LiveStack) -> Iterator[Observed]:
    """One request with a seed and a webhook (first delivery attempt fails), polled every 20 ms."""
    listener = WebhookListener(fail_first=1).start()
    with live_stack.client() as client:
        body = {"prompt": "a lighthouse at dusk", "seed": 1234, "output_format": "png"}
        submitted = submit(client, body, params={"fal_webhook": listener.url})
        result = Observed(submitted, webhooks=listener)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = status(client, submitted["request_id"], logs="true")
            result.statuses.append((response.status_code, response.json()))
            if response.json()["status"] == "COMPLETED":
                break
            time.sleep(0.02)
    yield result
    listener.stop()


def test_submit_answers_fal_shape(observed: Observed, live_stack: LiveStack) -> None:
    sub = observed.submitted
    rid = sub["request_id"]
    assert sub["status"] == "IN_QUEUE" and isinstance(sub["queue_position"], int)
    assert sub["response_url"] == f"{live_stack.url}/queue/{APP}/requests/{rid}"
    assert sub["status_url"] == sub["response_url"] + "/status"
    assert sub["cancel_url"] == sub["response_url"] + "/cancel"
    assert sub["gateway_request_id"] == rid


def test_status_goes_queue_progress_completed(observed: Observed) -> None:
    codes = {body["status"]: code for code, body in observed.statuses}
    assert codes.get("IN_PROGRESS") == 202 and codes["COMPLETED"] == 200
    if observed.seen("IN_QUEUE"):
        assert codes["IN_QUEUE"] == 202 and "queue_position" in observed.seen("IN_QUEUE")[0]
    in_progress = observed.seen("IN_PROGRESS")
    assert in_progress and "queue_position" not in in_progress[0]
    assert any(body["logs"] for body in in_progress), "progress logs while running"
    final = observed.final
    assert final["metrics"]["inference_time"] > 0 and "error" not in final
    patches = [PATCH_LOG.match(log["message"]) for log in final["logs"]]
    done, total, sampling_steps = next(m.groups() for m in reversed(patches) if m)
    # tiny 16x at 512x512: 32x32 tokens, 16 per patch: 64 patches; FAST: 10 sampling steps each
    assert done == total == "64" and sampling_steps == "10"
    assert final["logs"][-1]["message"].startswith("Done: 1 image(s) ready")  # last: the image is stored
    assert all(log["source"] == "USER" and log["level"] and log["timestamp"] for log in final["logs"])
    # polling logs are cumulative: each poll's list extends the previous one
    lengths = [len(body["logs"]) for _, body in observed.statuses if body["logs"] is not None]
    assert lengths == sorted(lengths)


def test_result_images_download_and_decode(observed: Observed, live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        response = client.get(observed.submitted["response_url"])
        assert response.status_code == 200 and response.headers["x-fal-request-id"] == observed.submitted["request_id"]
        output = response.json()
        assert output["seed"] == 1234 and output["prompt"] == "a lighthouse at dusk"
        assert output["has_nsfw_concepts"] == [False]
        image = output["images"][0]
        assert image["content_type"] == "image/png" and (image["width"], image["height"]) == (512, 512)
        download = httpx.get(image["url"])  # capability URL: no key needed
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        assert int(download.headers["content-length"]) == image["file_size"] == len(download.content)
        decoded = Image.open(io.BytesIO(download.content))
        assert decoded.format == "PNG" and decoded.size == (512, 512)


def test_webhook_delivered_with_retry(observed: Observed) -> None:
    hook = observed.webhook()
    body = hook["body"]
    assert body["request_id"] == observed.submitted["request_id"] and body["status"] == "OK"
    assert body["payload"]["seed"] == 1234 and body["gateway_request_id"]
    assert hook["headers"]["Content-Type"] == "application/json"
    assert observed.webhooks is not None and observed.webhooks.attempts >= 2  # a 500 first, then a retry


def test_webhook_signature_verifies_against_the_servers_jwks(observed: Observed, live_stack: LiveStack) -> None:
    hook = observed.webhook()
    jwks = httpx.get(f"{live_stack.url}/.well-known/jwks.json", timeout=10).json()  # public: no key needed
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert hook["headers"]["X-Fal-Webhook-Request-Id"] == observed.submitted["request_id"]
    assert verify(jwks, hook["headers"], hook["raw"])


def test_other_key_cannot_see_request(observed: Observed, live_stack: LiveStack) -> None:
    rid = observed.submitted["request_id"]
    with live_stack.client(KEY_B) as other:
        assert other.get(f"/queue/{APP}/requests/{rid}/status").status_code == 404
        assert other.get(f"/queue/{APP}/requests/{rid}").json() == {"detail": "Request not found"}
        assert other.put(f"/queue/{APP}/requests/{rid}/cancel").json() == {"status": "NOT_FOUND"}
    with live_stack.client(None) as anonymous:
        response = anonymous.get(f"/queue/{APP}/requests/{rid}/status")
        assert response.status_code == 401 and isinstance(response.json()["detail"], str)
    with live_stack.client("wrong-key") as wrong:
        assert wrong.post(f"/queue/{APP}", json={"prompt": "x"}).status_code == 401


def test_cancel_finished_request_is_400(observed: Observed, live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        response = client.put(observed.submitted["cancel_url"])
        assert response.status_code == 400 and response.json() == {"status": "ALREADY_COMPLETED"}
        assert client.put(f"/queue/{APP}/requests/does-not-exist/cancel").status_code == 404


def test_sync_run_same_seed_gives_identical_bytes(observed: Observed, live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        first = client.get(observed.submitted["response_url"]).json()["images"][0]
        body = {
            **FAST,
            "prompt": "a lighthouse at dusk",
            "seed": 1234,
            "output_format": "png",
            "sync_mode": True,
        }
        response = client.post(f"/{APP}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.headers["x-fal-request-id"]
        image = response.json()["images"][0]
        assert image["url"].startswith("data:image/png;base64,")
        inline = base64.b64decode(image["url"].split(",", 1)[1])
        assert inline == httpx.get(first["url"]).content  # byte-identical to the queued run
        assert image["file_size"] == len(inline) and (image["width"], image["height"]) == (512, 512)


def test_proxy_submit_stream_and_result(live_stack: LiveStack) -> None:
    proxy = "/api/fal/proxy"
    with live_stack.client() as client:
        target = "https://queue.fal.run/fal-ai/bitdance"
        response = client.post(proxy, json={**FAST, "prompt": "proxied"}, headers={"x-fal-target-url": target})
        assert response.status_code == 200, response.text
        rid = response.json()["request_id"]
        stream_target = f"https://queue.fal.run/{APP}/requests/{rid}/status/stream?logs=1"
        events = []
        headers = {"x-fal-target-url": stream_target, "accept": "text/event-stream"}
        with client.stream("GET", proxy, headers=headers, timeout=120) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "COMPLETED"  # the stream closed right after COMPLETED
        streamed_logs = [log for event in events for log in event["logs"]]
        messages = [log["message"] for log in streamed_logs]
        assert len(messages) == len(set(messages))  # incremental, no repeats
        result_target = f"https://queue.fal.run/{APP}/requests/{rid}"
        result = client.get(proxy, headers={"x-fal-target-url": result_target})
        assert result.status_code == 200 and result.json()["prompt"] == "proxied"


def test_queue_host_routing_and_trailing_slash(observed: Observed, live_stack: LiveStack) -> None:
    rid = observed.submitted["request_id"]
    port = live_stack.settings.port
    with live_stack.client(headers={"host": f"queue.localhost:{port}"}) as client:
        response = client.get(f"/{APP}/requests/{rid}/status/")
        assert response.status_code == 200
        assert response.json()["status_url"] == f"http://queue.localhost:{port}/{APP}/requests/{rid}/status"
        assert client.get(f"/{APP}/requests/{rid}/").status_code == 200
