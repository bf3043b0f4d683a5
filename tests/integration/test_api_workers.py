"""``python -m server --workers N``: N API processes on one port, each a full API on the shared Redis."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from core.settings import Settings, child_environment
from stack.launcher import ManagedProcess, RedisProcess, base_url, python_argv, start_api, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .helpers import APP, poll_until, status, submit


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def test_two_api_processes_serve_one_port(redis_server: RedisProcess, tmp_path: Path) -> None:
    settings: Settings = stack_settings(redis_server, tmp_path / "storage", api_workers=2, key_prefix="apiworkers")
    api = start_api(settings, log_path=tmp_path / "api.log")
    serve_and_check(api, settings, tmp_path)


def test_command_line_flags_reach_every_api_process(redis_server: RedisProcess, tmp_path: Path) -> None:
    """``--workers 2 --redis-url ...``: the environment names an unreachable Redis, the flag the real one;
    every process serves the parsed settings (a process on the environment's Redis would answer 503)."""
    settings: Settings = stack_settings(redis_server, tmp_path / "storage", key_prefix="apiflags")
    env = child_environment(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    argv = python_argv("server", "--workers", "2", "--redis-url", redis_server.url)
    with open(tmp_path / "api.log", "ab") as log:
        popen = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    serve_and_check(ManagedProcess("api", popen), settings, tmp_path)


def serve_and_check(api: ManagedProcess, settings: Settings, tmp_path: Path) -> None:
    """Both API processes start and answer submits, status polls and cancels on fresh connections."""
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
