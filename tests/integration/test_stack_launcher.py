"""``python -m stack`` (what ``make run`` starts): serves, survives a worker crash, stops every child on SIGINT."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from stack.launcher import free_port

from .helpers import APP, poll_until


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def worker_of(pid: int) -> int | None:
    """The launcher's worker child (``python -m worker``), if one runs."""
    for child in children_of(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"-m" in argv and argv[argv.index(b"-m") + 1] == b"worker":
                return child
    return None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_serves_and_stops_everything_on_sigint_even_started_in_the_background(tmp_path: Path) -> None:
    port = free_port()
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as `cmd &` in a script
    log = (tmp_path / "stack.log").open("w")
    stack = subprocess.Popen(
        [sys.executable, "-m", "stack", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=ignore_sigint,
    )
    children: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).json().get("workers", 0) >= 1
            except httpx.HTTPError:
                return False

        poll_until(ready, timeout_s=180, interval_s=0.5)
        body = {"prompt": "a red fox", "num_inference_steps": 10, "sync_mode": True}
        response = httpx.post(f"{url}/{APP}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["images"][0]["width"] == 1024  # the tiny 64x default: square_hd
        children = children_of(stack.pid)
        assert len(children) >= 3  # redis-server, a worker, the API

        # A worker crash is survived: the launcher restarts the worker and keeps Redis and the API up.
        worker = worker_of(stack.pid)
        api_and_redis = set(children) - {worker}
        os.kill(worker, signal.SIGKILL)
        poll_until(lambda: worker_of(stack.pid) not in (None, worker), timeout_s=60, interval_s=0.2)
        assert stack.poll() is None
        assert api_and_redis <= set(children_of(stack.pid))  # the same API and Redis processes
        poll_until(ready, timeout_s=180, interval_s=0.5)
        response = httpx.post(f"{url}/{APP}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert "worker-0 exited with code -9; restarting it in 1s" in (tmp_path / "stack.log").read_text()
        children = children_of(stack.pid)

        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if is_alive(pid)]
    finally:  # only does anything if the test failed
        for pid in [stack.pid, *children]:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        stack.wait(timeout=30)
        log.close()
