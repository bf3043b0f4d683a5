"""Polling helpers and a local webhook listener for the integration tests."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx

APP = "fal-ai/bitdance"
FAST = {"image_size": "square", "num_inference_steps": 10}
# The worker's progress log: "patch 12/64, 25 sampling steps each" (groups: patch, patches, sampling steps)
PATCH_LOG = re.compile(r"patch (\d+)/(\d+), (\d+) sampling steps each")
T = TypeVar("T")


def poll_until(check: Callable[[], T | None], timeout_s: float = 60.0, interval_s: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def submit(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"/queue/{APP}", json={**FAST, **body}, **kwargs)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def status(client: httpx.Client, rid: str, logs: str = "1") -> httpx.Response:
    return client.get(f"/queue/{APP}/requests/{rid}/status", params={"logs": logs})


def wait_completed(client: httpx.Client, rid: str, timeout_s: float = 120.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = status(client, rid)
        if response.status_code not in (200, 202):  # e.g. 503 while Redis restarts: poll again
            return None
        body: dict[str, Any] = response.json()
        return body if body["status"] == "COMPLETED" else None

    return poll_until(done, timeout_s)


def wait_status(client: httpx.Client, rid: str, wanted: str, timeout_s: float = 60.0) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        body: dict[str, Any] = status(client, rid).json()
        return body if body["status"] == wanted else None

    return poll_until(seen, timeout_s, interval_s=0.02)


@dataclass
class WebhookListener:
    """A local HTTP server recording POSTed JSON bodies; answers 500 to the first ``fail_first``."""

    fail_first: int = 0
    received: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    attempts: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> WebhookListener:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                listener.attempts += 1
                if listener.attempts <= listener.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                listener.received.put({"headers": dict(self.headers), "body": json.loads(body), "raw": body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
