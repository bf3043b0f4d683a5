"""Liveness and readiness as orchestrators probe them: the API's /health/live and /health/ready over real
HTTP, and ``python -m worker.probe`` against the live worker's heartbeat in a real Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from core.settings import child_environment
from stack.launcher import start_api, wait_until_ready
from tests.conftest import LiveStack, stack_settings
from tests.integration.helpers import poll_until
from worker.names import default_worker_name
from worker.probe import matching

ROOT = Path(__file__).resolve().parents[2]


def probe(stack: LiveStack, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = child_environment(stack.settings.model_copy(update=settings))
    env.pop("BITDANCE_WORKER_NAME", None)
    return subprocess.run(
        [sys.executable, "-m", "worker.probe", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_api_live_and_ready(live_stack: LiveStack) -> None:
    with live_stack.client(None) as client:  # probes carry no key
        live, ready = client.get("/health/live"), client.get("/health/ready")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["redis"] is True


def test_api_without_redis_is_live_but_not_ready(live_stack: LiveStack, tmp_path: Path) -> None:
    settings = stack_settings(live_stack.redis_server, tmp_path / "storage", redis_url="redis://127.0.0.1:1/0")
    api = start_api(settings, None, tmp_path / "api.log")
    try:
        url = f"http://127.0.0.1:{settings.port}"

        def answered() -> bool:
            try:
                return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll_until(answered, timeout_s=60, interval_s=0.2)
        ready = httpx.get(f"{url}/health/ready", timeout=30)
        body = ready.json()
        assert ready.status_code == 503 and body["status"] == "unavailable" and body["redis"] is False
        assert set(body.get("loops_down", {})) <= {"change_feed"}  # it cannot connect either (named with its error)
    finally:
        api.stop()


def test_worker_probe_follows_the_heartbeat(live_stack: LiveStack) -> None:
    wait_until_ready(live_stack.url, min_workers=1)
    name = "test-worker-0"  # the live stack's first worker
    ok = probe(live_stack, "--name", name)
    assert ok.returncode == 0 and name in ok.stdout
    missing = probe(live_stack, "--name", "no-such-worker")
    assert missing.returncode == 1 and "no heartbeat" in missing.stdout
    other_prefix = probe(live_stack, "--name", name, key_prefix="nobody-here")
    assert other_prefix.returncode == 1
    down = probe(live_stack, "--name", name, redis_url="redis://127.0.0.1:1/0")
    assert down.returncode == 1 and "Redis unreachable" in down.stdout


def test_probe_picks_this_hosts_workers() -> None:
    names = [
        default_worker_name("cuda:0", "gpu-host"),
        default_worker_name("cuda:1", "gpu-host"),
        "other-cuda:0-000000",
    ]
    assert matching(names, None, "gpu-host") == names[:2]
    assert matching(names, "other-cuda:0-000000", "gpu-host") == ["other-cuda:0-000000"]
    assert matching(names, None, "gpu") == []
