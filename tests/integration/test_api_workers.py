"""``python -m server --workers N``: N API processes on one port, each a full API on the shared Redis."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from core.settings import Settings
from stack.launcher import RedisProcess, base_url, start_api, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .helpers import APP, poll_until, status, submit


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def test_two_api_processes_serve_one_port(redis_server: RedisProcess, tmp_path: Path) -> None:
    settings: Settings = stack_settings(redis_server, tmp_path / "storage", api_workers=2, key_prefix="apiworkers")
    api = start_api(settings, log_path=tmp_path / "api.log")
    try:
        url = base_url(settings)
        wait_until_ready(url, processes=(api,))
        # uvicorn's supervisor and its two workers (plus its resource tracker when it runs one)
        assert len(children_of(api.pid)) >= 2, (tmp_path / "api.log").read_text()
        with httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY_A}"}, timeout=30) as client:
            ids = [submit(client, {"prompt": f"fox {i}"})["request_id"] for i in range(6)]
            for rid in ids:  # on new connections: whichever process accepts, it sees every request
                with httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY_A}"}) as fresh:
                    answer = status(fresh, rid)
                    assert answer.status_code == 202 and answer.json()["status"] == "IN_QUEUE"
            assert client.put(f"/queue/{APP}/requests/{ids[0]}/cancel").status_code == 202
        # both processes start (the first one answering is enough for wait_until_ready: wait for the other)
        log_path = tmp_path / "api.log"
        poll_until(lambda: log_path.read_text().count("Application startup complete") == 2, timeout_s=60)
    finally:
        assert api.stop() == 0
