"""Sync runs and status streams survive restarts: a Redis outage mid-run, an API shutdown (drain)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from core.requests.records import Keys
from stack.launcher import base_url, free_port, start_api, wait_until_ready
from tests.conftest import KEY_A, LiveStack

from .helpers import APP, FAST, poll_until, status, wait_completed

HEADERS = {"Authorization": f"Key {KEY_A}"}


def in_background(results: dict[str, Any], name: str, call: Any) -> threading.Thread:
    def target() -> None:
        try:
            results[name] = call()
        except Exception as exc:  # kept for the assertion, with its type
            results[name] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_sync_run_rides_out_a_redis_outage(live_stack: LiveStack) -> None:
    """Redis down for 4 s while a sync run waits: the run still answers its output (no 503)."""
    keys = Keys(live_stack.settings.key_prefix)
    store = live_stack.redis()
    results: dict[str, Any] = {}
    body = {**FAST, "prompt": "through an outage", "seed": 11}
    with httpx.Client(base_url=live_stack.url, headers=HEADERS, timeout=300) as client:
        thread = in_background(results, "run", lambda: client.post(f"/{APP}", json=body))
        poll_until(lambda: store.scard(keys.active) > 0, timeout_s=120)  # generating now
        live_stack.redis_server.kill()
        time.sleep(4.0)
        live_stack.redis_server.start()
        thread.join(timeout=240)
    response = results["run"]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    assert response.json()["seed"] == 11
    live_stack.wait_ready(min_workers=1)


def stream_events(url: str, path: str, first_event: threading.Event) -> list[dict[str, Any]]:
    """Read a status stream to its end; raises if the connection breaks instead of ending cleanly."""
    events = []
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as client:
        with client.stream("GET", path, headers={"accept": "text/event-stream"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                    first_event.set()
    return events


def queued_request_id(store: redis.Redis, keys: Keys, prompt: str) -> str | None:
    for rid in store.smembers(keys.queued):
        if json.loads(store.hget(keys.record(rid), "input") or "{}").get("prompt") == prompt:
            return str(rid)
    return None


@pytest.mark.timeout(240)
def test_api_shutdown_drains_sync_runs_and_ends_streams_cleanly(live_stack: LiveStack) -> None:
    """SIGTERM: no new connections; in-flight runs are answered with their real outcome while the grace
    lasts, then with fal's error shape and their request id; the request itself is not cancelled."""
    prefix = f"drain{uuid.uuid4().hex[:8]}"  # no worker serves this prefix: requests stay queued
    settings = live_stack.settings.model_copy(
        update={"port": free_port(), "key_prefix": prefix, "shutdown_grace_s": 3.0}
    )
    other_settings = settings.model_copy(update={"port": free_port()})  # a replica that stays up
    draining = start_api(settings, None, live_stack.log_dir / "api-draining.log")
    other = start_api(other_settings, None, live_stack.log_dir / "api-other.log")
    url, other_url = base_url(settings), base_url(other_settings)
    keys = Keys(prefix)
    store = live_stack.redis()
    results: dict[str, Any] = {}
    try:
        wait_until_ready(url, processes=(draining,))
        wait_until_ready(other_url, processes=(other,))
        with httpx.Client(base_url=url, headers=HEADERS, timeout=120) as client:
            watched = client.post(f"/queue/{APP}", json={**FAST, "prompt": "watched"}).json()
            stream_path = f"/queue/{APP}/requests/{watched['request_id']}/status/stream"
            streaming = threading.Event()
            threads = [
                in_background(results, "cancelled", lambda: client.post(f"/{APP}", json={**FAST, "prompt": "a"})),
                in_background(results, "drained", lambda: client.post(f"/{APP}", json={**FAST, "prompt": "b"})),
                in_background(results, "stream", lambda: stream_events(url, stream_path, streaming)),
            ]
            run_a = poll_until(lambda: queued_request_id(store, keys, "a"), timeout_s=30)
            run_b = poll_until(lambda: queued_request_id(store, keys, "b"), timeout_s=30)
            assert streaming.wait(timeout=30)  # the stream is open and has sent its first event

            signalled = time.monotonic()
            draining.popen.send_signal(signal.SIGTERM)
            with httpx.Client(base_url=other_url, headers=HEADERS, timeout=30) as replica:
                assert replica.put(f"/queue/{APP}/requests/{run_a}/cancel").status_code == 202
                time.sleep(0.5)
                with pytest.raises(httpx.ConnectError):  # no new connections while draining
                    httpx.get(f"{url}/health", timeout=5)
                for thread in threads:
                    thread.join(timeout=60)
                assert draining.popen.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
                elapsed = time.monotonic() - signalled

                cancelled = results["cancelled"]  # finished during the grace: its real outcome
                assert isinstance(cancelled, httpx.Response), cancelled
                assert cancelled.status_code == 499 and cancelled.json()["error_type"] == "client_cancelled"

                drained = results["drained"]  # still waiting at the end of the grace period
                assert isinstance(drained, httpx.Response), drained
                assert drained.status_code == 500, drained.text
                assert drained.headers["x-fal-request-id"] == run_b
                assert drained.headers["x-fal-retryable"] == "false"
                assert drained.json()["error_type"] == "internal_error"
                assert f"/requests/{run_b}" in drained.json()["detail"]
                assert 3.0 <= elapsed < 3.0 + 10

                events = results["stream"]  # ended cleanly (no broken chunked transfer)
                assert isinstance(events, list), events
                assert events and events[-1]["status"] == "IN_QUEUE"

                # The drained run was not cancelled: it is still queued, the client can fetch it later.
                assert status(replica, run_b).json()["status"] == "IN_QUEUE"
                assert replica.get(f"/queue/{APP}/requests/{run_b}").status_code == 400  # in progress
    finally:
        draining.stop()
        other.stop()


def test_drained_run_result_is_fetched_after_the_restart(live_stack: LiveStack) -> None:
    """The request a drain answered goes on in the queue: the worker completes it, the result is served."""
    settings = live_stack.settings.model_copy(update={"port": free_port(), "shutdown_grace_s": 0.5})
    draining = start_api(settings, None, live_stack.log_dir / "api-drain-result.log")
    results: dict[str, Any] = {}
    try:
        wait_until_ready(base_url(settings), min_workers=1, processes=(draining,))
        with httpx.Client(base_url=base_url(settings), headers=HEADERS, timeout=120) as client:
            # long enough to be still running when the 0.5 s grace ends (FAST alone takes ~1.4 s on an
            # idle machine, now that the worker starts it the moment it is submitted)
            body = {**FAST, "num_inference_steps": 60, "prompt": "drained then fetched", "seed": 21}
            thread = in_background(results, "run", lambda: client.post(f"/{APP}", json=body))
            time.sleep(1.0)
            draining.popen.send_signal(signal.SIGTERM)
            thread.join(timeout=60)
        drained = results["run"]
        assert isinstance(drained, httpx.Response) and drained.status_code == 500, drained
        rid = drained.headers["x-fal-request-id"]
        with live_stack.client() as client:
            assert "error" not in wait_completed(client, rid, timeout_s=180)
            assert client.get(f"/queue/{APP}/requests/{rid}").json()["seed"] == 21
    finally:
        draining.stop()
