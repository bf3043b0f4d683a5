"""Issue 19 item 2 on a real API process and a real redis-server: a background loop that fails is
restarted (with backoff) and ``/health/ready`` and ``/health`` answer 503 naming it until it runs again.

Before: the loops shared the lifespan's task group unguarded, so the file expiry's ``OSError`` (EMFILE
in the issue) took the change feed down with it, and readiness still said 200. The faults here are
real: the storage's staging folder replaced by a file (``NotADirectoryError`` in the scan), and the
change feed's Redis connection killed while Redis refuses new connections (``maxclients``).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.storage import LocalStorage
from stack.launcher import ManagedProcess, RedisProcess, base_url, free_port, start_api, wait_until_ready
from tests.conftest import KEY_A, stack_settings
from tests.integration.helpers import APP, FAST, poll_until

AUTH = {"Authorization": f"Key {KEY_A}"}


@dataclass
class SupervisedApi:
    url: str
    storage_dir: Path
    redis_server: RedisProcess
    api: ManagedProcess

    def readiness(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{self.url}/health/ready", timeout=10)
        return response.status_code, response.json()

    def health(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{self.url}/health", timeout=10)
        return response.status_code, response.json()

    def wait_down(self, loop: str, timeout_s: float = 30) -> dict[str, Any]:
        def down() -> dict[str, Any] | None:
            status, body = self.readiness()
            return body if status == 503 and loop in body.get("loops_down", {}) else None

        return poll_until(down, timeout_s, interval_s=0.1)

    def wait_ready(self, timeout_s: float = 30) -> None:
        poll_until(lambda: self.readiness()[0] == 200, timeout_s, interval_s=0.1)


@pytest.fixture
def supervised_api(tmp_path: Path) -> Iterator[SupervisedApi]:
    """An API with its own redis-server (its clients may be killed) and a janitor pass every 0.2 s."""
    redis_server = RedisProcess(tmp_path / "redis", log_path=tmp_path / "redis.log").start()
    settings = stack_settings(
        redis_server, tmp_path / "storage", key_prefix=f"loops{free_port()}", file_expiry_interval_s=0.2
    )
    api = start_api(settings, None, tmp_path / "api.log")
    try:
        wait_until_ready(base_url(settings), processes=(api,))
        supervised = SupervisedApi(base_url(settings), settings.storage_dir, redis_server, api)
        supervised.wait_ready()
        yield supervised
    finally:
        api.stop()
        redis_server.stop()


@dataclass
class StreamReader:
    """A status stream read on a thread: the statuses of its events, in order."""

    url: str
    request_id: str
    statuses: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> StreamReader:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        poll_until(lambda: self.statuses, timeout_s=20)
        return self

    def _read(self) -> None:
        path = f"/queue/{APP}/requests/{self.request_id}/status/stream"
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=120) as client:
            with client.stream("GET", path) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        self.statuses.append(json.loads(line[6:])["status"])


def submit(api: SupervisedApi) -> str:
    response = httpx.post(f"{api.url}/queue/{APP}", json={"prompt": "p", **FAST}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def cancel(api: SupervisedApi, rid: str) -> None:
    response = httpx.put(f"{api.url}/queue/{APP}/requests/{rid}/cancel", headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text


def test_a_failing_file_expiry_is_reported_and_recovers_without_taking_the_change_feed(
    supervised_api: SupervisedApi,
) -> None:
    staging = supervised_api.storage_dir / ".staging"
    stream = StreamReader(supervised_api.url, submit(supervised_api)).start()
    shutil.move(staging, staging.with_name("staging-aside"))
    staging.write_text("not a folder")  # every janitor pass now raises NotADirectoryError
    try:
        body = supervised_api.wait_down("file_expiry")  # before: 200 throughout
        assert "NotADirectoryError" in body["loops_down"]["file_expiry"] and body["redis"] is True
        status, health = supervised_api.health()
        assert status == 503 and "file_expiry" in health["loops_down"]
        cancel(supervised_api, stream.request_id)  # the change feed lives on: the stream gets its event
        poll_until(lambda: "COMPLETED" in stream.statuses, timeout_s=20)
    finally:
        staging.unlink()
        shutil.move(staging.with_name("staging-aside"), staging)
    supervised_api.wait_ready()  # the loop runs again: files expire again
    expiring = LocalStorage(supervised_api.storage_dir).put_bytes(
        b"x", file_name="x.txt", content_type="text/plain", owner="o", ttl_s=1
    )
    poll_until(lambda: not (supervised_api.storage_dir / expiring.token).exists(), timeout_s=20)
    assert "file_expiry" not in supervised_api.health()[1].get("loops_down", {})


def test_a_broken_change_feed_is_reported_and_streams_get_their_events_once_it_is_back(
    supervised_api: SupervisedApi,
) -> None:
    stream = StreamReader(supervised_api.url, submit(supervised_api)).start()
    admin = redis.Redis.from_url(supervised_api.redis_server.url, decode_responses=True)
    max_clients = admin.config_get("maxclients")["maxclients"]
    # Room for the connections open now but the feed's: once it is killed, no new connection is accepted.
    admin.config_set("maxclients", admin.info("clients")["connected_clients"] - 1)
    try:
        assert admin.client_kill_filter(_type="pubsub") == 1  # the feed's connection
        body = supervised_api.wait_down("change_feed")  # before: 200 while the feed retried in vain
        assert body["redis"] is True  # Redis itself still answers the API's pooled connections
        cancel(supervised_api, stream.request_id)  # no feed: the stream hears nothing of it yet
        time.sleep(0.5)
    finally:
        admin.config_set("maxclients", max_clients)
    supervised_api.wait_ready()
    poll_until(lambda: stream.statuses[-1] == "COMPLETED", timeout_s=20)  # woken once the feed is back
    admin.close()
