"""Status streams and polls follow changes pushed over Redis pub/sub, not a timer.

The API here polls nothing: ``poll_interval_s`` and the keep-alive are 30 s, so every event below
that arrives within seconds was pushed (a worker's log entry, a start, a cancel ahead in the queue).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from core.errors import ClientCancelledError
from core.protocol import LogEntry
from core.requests.worker_store import WorkerRequestStore
from stack.launcher import RedisProcess, base_url, start_api, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .helpers import APP, submit

PUSHED_WITHIN_S = 5.0


def read_events(client: httpx.Client, path: str, events: queue.Queue[dict[str, Any] | None]) -> None:
    with client.stream("GET", path, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.put(json.loads(line[6:]))
    events.put(None)  # closed


def next_event(events: queue.Queue[dict[str, Any] | None]) -> dict[str, Any] | None:
    return events.get(timeout=PUSHED_WITHIN_S)


def test_streams_and_polls_follow_pushed_changes(redis_server: RedisProcess, tmp_path: Path) -> None:
    settings = stack_settings(
        redis_server, tmp_path / "storage", key_prefix="push", poll_interval_s=30.0, stream_keepalive_s=30.0
    )
    api = start_api(settings, log_path=tmp_path / "api.log")
    headers = {"Authorization": f"Key {KEY_A}"}
    try:
        url = base_url(settings)
        wait_until_ready(url, processes=(api,))
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            first, second = (submit(client, {"prompt": p})["request_id"] for p in ("ahead", "behind"))
            events: queue.Queue[dict[str, Any] | None] = queue.Queue()
            path = f"/queue/{APP}/requests/{second}/status/stream?logs=1"
            threading.Thread(target=read_events, args=(client, path, events), daemon=True).start()
            opened = next_event(events)
            assert opened is not None and opened["status"] == "IN_QUEUE" and opened["queue_position"] == 1

            store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
            store.append_log(second, LogEntry.now("pushed log line"))
            logged = next_event(events)
            assert logged is not None and [log["message"] for log in logged["logs"]] == ["pushed log line"]

            poll = f"/queue/{APP}/requests/{first}/status"
            assert client.get(poll).json()["status"] == "IN_QUEUE"  # now cached in the API
            assert client.put(f"/queue/{APP}/requests/{first}/cancel").status_code == 202
            assert client.get(poll).json()["status"] == "COMPLETED"  # the API's own write: read at once
            moved = next_event(events)
            assert moved is not None and moved["queue_position"] == 0  # the request ahead left the queue

            behind = f"/queue/{APP}/requests/{second}/status"
            assert client.get(behind).json()["status"] == "IN_QUEUE"
            assert store.start(second, "outside-worker") == "started"  # another process changes it
            deadline = time.monotonic() + PUSHED_WITHIN_S
            while client.get(behind).json()["status"] != "IN_PROGRESS":  # the cached view is dropped
                assert time.monotonic() < deadline, "a cached status outlived a pushed change"
                time.sleep(0.02)
            started = next_event(events)
            assert started is not None and started["status"] == "IN_PROGRESS"

            assert client.put(f"/queue/{APP}/requests/{second}/cancel").status_code == 202  # running: flagged
            assert store.complete_error(second, ClientCancelledError().to_stored()) is True
            done = next_event(events)
            assert done is not None and done["status"] == "COMPLETED"
            assert next_event(events) is None  # the stream ends right after COMPLETED
    finally:
        api.stop()


def test_log_entries_alone_wake_only_what_shows_logs(redis_server: RedisProcess) -> None:
    """A worker publishes on every decoding step; streams and cached views without logs ignore those."""
    import asyncio

    import redis.asyncio as aioredis

    from core.requests.records import LOGS_CHANGED, Keys
    from server.change_feed import ChangeFeed

    class Recorder:
        def __init__(self) -> None:
            self.changes: list[tuple[str, bool]] = []

        def request_changed(self, rid: str, logs_only: bool = False) -> None:
            self.changes.append((rid, logs_only))

        def queue_moved(self) -> None:
            pass

        def feed_reset(self) -> None:
            pass

    async def scenario() -> None:
        keys = Keys("logs-only")
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        feed, recorder = ChangeFeed(client, keys), Recorder()
        feed.add_listener(recorder)
        running = asyncio.ensure_future(feed.run())
        try:
            await asyncio.wait_for(feed.connected.wait(), 10)
            plain, with_logs = feed.watch("r", with_logs=False), feed.watch("r", with_logs=True)
            publisher = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            await publisher.publish(keys.changed("r"), LOGS_CHANGED)
            assert await with_logs.wait(5.0)
            assert not await plain.wait(0.3)
            await publisher.publish(keys.changed("r"), "completed")
            assert await plain.wait(5.0) and await with_logs.wait(5.0)
            assert recorder.changes == [("r", True), ("r", False)]
            await publisher.aclose()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await client.aclose()

    asyncio.run(scenario())
