"""Progress throttling and the stop check."""

from __future__ import annotations

from collections.abc import Callable

import redis

from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker.progress import CANCEL_FRESH_S, ProgressTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_each_step_and_throttles(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    clock = Clock()
    tracker = ProgressTracker(store, "rid", num_inference_steps=25, interval_s=1.0, clock=clock)
    for patch in range(1, 11):
        clock.now += 0.25
        tracker.on_patch(patch, 10)
    logged = store.client.lrange(store.keys.logs("rid"), 0, -1)
    # first and last always, plus one per elapsed second in between
    assert len(logged) == 4
    assert '"patch 1/10, 25 sampling steps each"' in logged[0]
    assert '"patch 10/10, 25 sampling steps each; decoding to pixels"' in logged[-1]
    assert '"source":"USER"' in logged[0] and '"level":"INFO"' in logged[0] and '"timestamp"' in logged[0]
    assert tracker.should_stop() is False
    store.client.hset(store.keys.record("rid"), "cancel", "1")
    clock.now += 2 * CANCEL_FRESH_S  # the last log's reading is no longer fresh
    assert tracker.should_stop() is True


def test_a_stop_check_right_after_a_log_uses_the_logs_reading(make_settings: Callable[..., Settings]) -> None:
    """A logged step reads the cancel flag in its own round trip; the stop check that follows it uses that."""
    settings = make_settings()
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    clock = Clock()
    tracker = ProgressTracker(store, "rid", num_inference_steps=25, interval_s=0.0, clock=clock)
    tracker.on_patch(1, 64)
    store.client.hset(store.keys.record("rid"), "cancel", "1")  # set after the log read it
    assert tracker.should_stop() is False  # no second round trip: the log's reading, fresh
    clock.now += CANCEL_FRESH_S
    assert tracker.should_stop() is True  # older than CANCEL_FRESH_S: read again
    tracker.on_patch(2, 64)  # the log reads it set
    assert tracker.should_stop() is True


def test_progress_survives_redis_errors(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.1), settings)
    tracker = ProgressTracker(store, "rid", num_inference_steps=10)
    tracker.on_patch(1, 2)  # no exception
    assert tracker.should_stop() is False
