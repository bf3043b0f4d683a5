"""The HTTP checks of `make test-containers` (tests/containers/run.sh), through the published port of compose's
nginx. Standard library only: runs on the host's python3, before any venv exists."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

APP = "fal-ai/bitdance"


def call(url: str, key: str | None, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, bytes, str]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Key {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def ok(condition: bool, what: str) -> None:
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        sys.exit(1)


def health(project: str) -> dict[str, str]:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            '{{.Label "com.docker.compose.service"}}\t{{.Status}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def wait_healthy(project: str, services: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = health(project)
        if all("(healthy)" in states.get(s, "") for s in services):
            ok(True, "healthy: " + ", ".join(f"{s} [{states[s]}]" for s in services))
            return
        if time.monotonic() > deadline:
            ok(False, f"healthchecks after {timeout:.0f}s: {states}")
        time.sleep(2)


def submit(base: str, key: str, prompt: str) -> str:
    status, body, _ = call(f"{base}/queue/{APP}", key, "POST", {"prompt": prompt, "image_size": "square"})
    ok(status == 200, f"submit -> {status}")
    request_id: str = json.loads(body)["request_id"]
    return request_id


def stream_until_done(base: str, key: str, request_id: str, timeout: float = 180) -> list[str]:
    """The status stream (server-sent events) until COMPLETED; the statuses seen, in order."""
    request = urllib.request.Request(
        f"{base}/queue/{APP}/requests/{request_id}/status/stream", headers={"Authorization": f"Key {key}"}
    )
    seen: list[str] = []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        ok("text/event-stream" in response.headers.get("Content-Type", ""), "status stream is text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:"):
                status = json.loads(line[5:])["status"]
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == "COMPLETED":
                    break
    return seen


def result_and_image(base: str, key: str, request_id: str) -> None:
    status, body, _ = call(f"{base}/queue/{APP}/requests/{request_id}", key)
    ok(status == 200, f"result -> {status}")
    image = json.loads(body)["images"][0]
    path = urlsplit(image["url"]).path
    status, data, kind = call(f"{base}{path}", None)
    ok(
        status == 200 and kind.startswith("image/") and len(data) > 100,
        f"image {path} -> {status} {kind}, {len(data)} bytes",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--services", default="redis,api,proxy,worker-simulated")
    for flag in ("--wait-healthy", "--round-trip", "--submit-queued", "--still-queued", "--after-restart"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args()
    base, key = args.url.rstrip("/"), args.key
    state: dict[str, str] = json.loads(args.state.read_text()) if args.state and args.state.exists() else {}
    if args.wait_healthy:
        wait_healthy(args.project, args.services.split(","))
    if args.round_trip:
        status, body, _ = call(f"{base}/health/ready", None)
        ok(status == 200, f"/health/ready -> {status} {body[:80]!r}")
        status, body, _ = call(f"{base}/queue/{APP}", None, "POST", {"prompt": "no key"})
        ok(status == 401, f"submit without a key -> {status}")
        request_id = submit(base, key, "a lighthouse at dusk")
        seen = stream_until_done(base, key, request_id)
        ok(seen[-1] == "COMPLETED", f"status stream: {' -> '.join(seen)}")
        result_and_image(base, key, request_id)
        state["completed"] = request_id
    if args.submit_queued:
        state["queued"] = submit(base, key, "queued across down && up")
        status, body, _ = call(f"{base}/queue/{APP}/requests/{state['queued']}/status", key)
        ok(json.loads(body)["status"] == "IN_QUEUE", f"no worker: status {json.loads(body)['status']}")
    if args.still_queued:
        status, body, _ = call(f"{base}/queue/{APP}/requests/{state['queued']}/status", key)
        queued = json.loads(body).get("status") if status in (200, 202) else None
        ok(queued == "IN_QUEUE", f"after down && up: queued request -> {status} {queued}")
        result_and_image(base, key, state["completed"])  # the completed result and its image survived
    if args.after_restart:
        seen = stream_until_done(base, key, state["queued"])
        ok(seen[-1] == "COMPLETED", f"queued request after down && up: {' -> '.join(seen)}")
        result_and_image(base, key, state["queued"])
    if args.state:
        args.state.write_text(json.dumps(state))


if __name__ == "__main__":
    main()
