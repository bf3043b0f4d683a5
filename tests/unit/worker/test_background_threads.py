"""``worker.background``: a worker's threads outlive what one round of their work raises (issue 19:
an uncaught error ended a background task for good), and the heartbeat names the threads that cannot
run in the worker's info (shown by ``/health`` under ``live_workers``). Real Redis, real stores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from core.requests.records import Keys
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from core.webhooks.outbox import build_outbox
from tests.integration.helpers import poll_until
from worker.background import Heartbeat, PeriodicThread, WorkerThreads
from worker.wakeup import QueueWakeup


class Idle:
    current_leases: tuple[tuple[str, str], ...] = ()

    def lose(self, request_id: str, attempt: str) -> None:
        raise AssertionError("an idle runner holds no lease")


@pytest.fixture
def store(make_settings: Callable[..., Settings]) -> Iterator[WorkerRequestStore]:
    settings = make_settings(lease_ttl_s=0.6, sweep_interval_s=0.1)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield WorkerRequestStore(client, settings)
    client.close()


def heartbeat_at(store: WorkerRequestStore, worker: str) -> float | None:
    score = store.client.zscore(store.keys.workers, worker)
    return float(score) if score is not None else None


def test_a_tick_that_raises_is_retried_with_backoff_and_the_thread_lives_on() -> None:
    ticks: list[float] = []
    errors_seen: list[str] = []

    class Flaky(PeriodicThread):
        def tick(self) -> None:
            ticks.append(time.monotonic())
            errors_seen.append(self.last_error)
            if len(ticks) <= 3:
                raise OSError(24, "Too many open files")

    thread = Flaky("flaky", 0.02)
    thread.start()
    try:
        poll_until(lambda: len(ticks) >= 6, timeout_s=10)  # before: the first error ended the thread
        assert thread.is_alive() and not thread.is_down and thread.failures == 0
        assert errors_seen[1:4] == ["OSError: [Errno 24] Too many open files"] * 3  # down while it failed
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        assert gaps[2] > gaps[0] * 1.5  # 0.02, 0.04, 0.08 ...: it backed off
    finally:
        thread.stop()
        thread.join(5)


def test_the_heartbeat_survives_a_beat_that_raises(store: WorkerRequestStore) -> None:
    """Before, only Redis errors were caught: any other error ended the heartbeat, the worker vanished
    from the fleet and the leases of its running requests expired while it still ran them."""
    info: dict[str, Any] = {"device": "cpu", "model": {"unserialisable": {1, 2}}}  # json.dumps raises TypeError
    beat = Heartbeat(store, [("w", Idle())], "w", info)
    beat.start()
    try:
        poll_until(lambda: beat.failures >= 2, timeout_s=5)
        assert beat.is_down and beat.last_error.startswith("TypeError") and beat.is_alive()
        assert heartbeat_at(store, "w") is None
        beat.info = {"device": "cpu", "model": {"name": "m"}}
        poll_until(lambda: heartbeat_at(store, "w"), timeout_s=5)
        assert not beat.is_down
    finally:
        beat.stop()
        beat.join(5)


def test_threads_that_cannot_run_are_named_in_the_heartbeats_worker_info(store: WorkerRequestStore) -> None:
    class BrokenSweeps(WorkerRequestStore):
        def recover_orphans(self) -> dict[str, Any]:
            raise RuntimeError("sweep broken")

    broken = BrokenSweeps(store.client, store.settings)
    keys = Keys(store.settings.key_prefix)
    wakeup = QueueWakeup(store.client, keys)
    threads = WorkerThreads(broken, [("w", Idle())], "w", build_outbox(store.client, store.settings), wakeup, {})
    threads.start()
    try:

        def info() -> dict[str, Any]:
            raw = store.client.get(keys.worker_info("w"))
            return dict(json.loads(raw)) if raw else {}

        found = poll_until(lambda: info().get("threads_down"), timeout_s=10)
        assert found == ["sweeper-w"] and threads.sweeper.is_alive()
    finally:
        threads.stop()
