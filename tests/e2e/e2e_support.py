"""Helpers shared by the e2e tests: running the client drivers, a webhook receiver, image checks."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

E2E_DIR = Path(__file__).resolve().parent
JS_DIR = E2E_DIR / "js"
PYTHON_DRIVER = E2E_DIR / "python_client_driver.py"
JS_SCENARIOS = JS_DIR / "scenarios.mjs"
APP = "fal-ai/bitdance"

# PIL's format name for each content type the server may report.
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


@dataclass(frozen=True)
class StackEndpoint:
    """Where the e2e stack listens and what a client needs to trust and use it."""

    host_port: str  # "127.0.0.1:PORT", what FAL_RUN_HOST takes
    ca_file: Path  # the CA that signed the server certificate, what SSL_CERT_FILE takes
    api_key: str  # a key configured in BITDANCE_API_KEYS
    key_pair: str | None = None  # a configured key of the form key_id:key_secret, if any

    @property
    def base_url(self) -> str:
        return f"https://{self.host_port}"

    def python_client_env(self, *, key: str | None = None, key_pair: str | None = None) -> dict[str, str]:
        """The environment a fal-client user sets, exactly as README documents it.

        ``key_pair`` (``id:secret``) is passed as ``FAL_KEY_ID`` + ``FAL_KEY_SECRET`` instead of ``FAL_KEY``.
        """
        env = clean_client_env()
        env.update(
            FAL_RUN_HOST=self.host_port,
            FAL_QUEUE_RUN_HOST=f"{self.host_port}/queue",
            SSL_CERT_FILE=str(self.ca_file),
        )
        if key_pair is not None:
            env["FAL_KEY_ID"], env["FAL_KEY_SECRET"] = key_pair.split(":", 1)
        else:
            env["FAL_KEY"] = key if key is not None else self.api_key
        return env

    def python_localhost_env(self) -> dict[str, str]:
        """The environment README gives for every fal-client release, the only one before 0.11:
        ``FAL_RUN_HOST=localhost:PORT`` alone, so queue calls go to ``queue.localhost:PORT``."""
        env = clean_client_env()
        port = self.host_port.rsplit(":", 1)[1]
        env.update(FAL_KEY=self.api_key, FAL_RUN_HOST=f"localhost:{port}", SSL_CERT_FILE=str(self.ca_file))
        return env

    def js_client_env(self) -> dict[str, str]:
        env = clean_client_env()
        env.update(FAL_KEY=self.api_key, NODE_EXTRA_CA_CERTS=str(self.ca_file))
        return env

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def clean_client_env() -> dict[str, str]:
    """The test process's environment without anything that would redirect or authorise a client."""
    dropped_prefixes = ("FAL_", "BITDANCE_", "SSL_CERT_", "NODE_EXTRA_CA_CERTS")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped_prefixes)}
    for proxy_var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy_var, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_json_command(command: list[str], env: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
    """Run a driver that prints one JSON document; fail with its stderr when it does not."""
    try:
        completed = subprocess.run(
            command, env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise AssertionError(
            f"{command[:3]} did not finish within {timeout_s} s\n--- stderr ---\n{(stderr or '')[-6000:]}"
        ) from exc
    if completed.returncode != 0:
        raise AssertionError(
            f"{command[:3]} exited with {completed.returncode}\n--- stderr ---\n{completed.stderr[-6000:]}"
        )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{command[:3]} printed no JSON: {exc}\n--- stdout ---\n{completed.stdout[-3000:]}"
            f"\n--- stderr ---\n{completed.stderr[-3000:]}"
        ) from exc


def run_python_driver(
    stack: StackEndpoint,
    group: str,
    *extra_args: str,
    key: str | None = None,
    key_pair: str | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    command = [sys.executable, str(PYTHON_DRIVER), group, *extra_args]
    return run_json_command(command, stack.python_client_env(key=key, key_pair=key_pair), timeout_s)


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not on PATH: the JS e2e tests need Node.js >= 18")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json").is_file():
        raise AssertionError(f"@fal-ai/client is not installed in {JS_DIR}: run `make js-deps`")
    return node


def run_js_scenarios(stack: StackEndpoint, mode: str, group: str = "all", timeout_s: float = 300) -> dict[str, Any]:
    command = [node_executable(), str(JS_SCENARIOS), mode, stack.base_url, group]
    return run_json_command(command, stack.js_client_env(), timeout_s)


def scenario(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One scenario's outcome; a scenario that raised fails the test with the driver's traceback."""
    outcome = report[name]
    if not outcome.get("ok"):
        trace = outcome.get("traceback") or outcome.get("stack") or ""
        raise AssertionError(f"scenario {name!r} raised {outcome.get('error')}\n{trace}")
    return outcome


# ---------------------------------------------------------------- webhooks


class WebhookReceiver:
    """A local HTTP listener that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                delivery = {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "headers": dict(self.headers.items()),
                    "body": json.loads(raw) if raw else None,
                }
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver._changed:
                    receiver.deliveries.append(delivery)
                    receiver._changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/bitdance"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, request_id: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for delivery in self.deliveries:
                    body = delivery["body"]
                    if isinstance(body, dict) and body.get("request_id") == request_id:
                        return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no webhook for {request_id} within {timeout_s} s; got {self.deliveries!r}")
                self._changed.wait(remaining)


# ---------------------------------------------------------------- images


def fetch_bytes(url: str, stack: StackEndpoint) -> tuple[bytes, str | None]:
    """The bytes behind an output URL and its content type: data URIs decoded, https downloaded.

    Downloads carry no credentials, as a browser or ``curl`` following the URL would not.
    """
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        assert header.endswith(";base64"), f"data URI is not base64: {header}"
        return base64.b64decode(payload), header[len("data:") : -len(";base64")]
    assert url.startswith(stack.base_url + "/"), f"file URL {url} is not on {stack.base_url}"
    response = httpx.get(url, verify=stack.ssl_context(), timeout=30)
    assert response.status_code == 200, f"GET {url}: {response.status_code} {response.text[:200]}"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content, response.headers.get("content-type")


def check_images(
    output: Mapping[str, Any],
    stack: StackEndpoint,
    *,
    count: int = 1,
    size: tuple[int, int] = (512, 512),
    content_type: str = "image/png",
    inline: bool = False,
) -> list[Image.Image]:
    """Check a BitDance output the way a user consumes it: download each image and decode it.

    ``size`` is (width, height). ``inline``: the URLs must be data URIs (``sync_mode``).
    """
    images = output["images"]
    nsfw = output["has_nsfw_concepts"]
    assert len(images) == count, output
    assert isinstance(nsfw, list) and len(nsfw) == count, output
    assert all(isinstance(flag, bool) for flag in nsfw), nsfw
    decoded = []
    for image, flagged in zip(images, nsfw, strict=True):
        assert image["url"].startswith("data:") == inline, image["url"][:80]
        assert image["content_type"] == content_type, image
        assert (image["width"], image["height"]) == size, image
        body, served_type = fetch_bytes(image["url"], stack)
        assert served_type is not None and served_type.split(";")[0].strip() == content_type
        if image.get("file_size") is not None:
            assert image["file_size"] == len(body), image
        picture = Image.open(io.BytesIO(body))
        picture.load()
        assert picture.format == PIL_FORMATS[content_type]
        assert picture.size == size
        if flagged:  # a flagged image is replaced by a black one of the same size
            assert picture.convert("L").getextrema() == (0, 0)
        decoded.append(picture)
    return decoded


# The worker's per-patch progress entries: "patch 3/16, 10 sampling steps each" (README, "Progress logs").
STEP_LOG = re.compile(r"\bpatch \d+/\d+\b")


def step_log_messages(logs: list[dict[str, Any]] | None) -> list[str]:
    """The progress messages among fal log entries, checking each entry's shape on the way."""
    messages = []
    for entry in logs or []:
        assert set(entry) >= {"message", "level", "timestamp"}, entry
        assert isinstance(entry["message"], str)
        if STEP_LOG.search(entry["message"]):
            messages.append(entry["message"])
    return messages
