"""Idle workers wake on a submit (``worker.wakeup``), on a real Redis: one dequeuer per submit, and
polling again when the subscription is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from core.requests.api_store import create_request
from core.requests.records import Keys, NewRequest
from core.requests.rq_integration import tracked_queue_class
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker.wakeup import QueueWakeup

LONG_WAIT_S = 30.0  # far longer than any wake below may take
DEQUEUE_TIMEOUT_S = 4  # how long the dequeuers wait in all (the two left idle then give up)


def started(wakeup: QueueWakeup) -> QueueWakeup:
    wakeup.start()
    assert wakeup.connected.wait(10)
    return wakeup


def new_request(settings: Settings, rid: str) -> NewRequest:
    return NewRequest(
        request_id=rid, owner="o", endpoint=settings.endpoint_id, input={"prompt": "p"}, priority="normal",
        files_base="http://h", start_timeout_s=None, webhook=None, lifecycle=None,
    )  # fmt: skip


def test_a_submit_wakes_one_idle_dequeuer_at_once(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = WorkerRequestStore(client, settings)
    # no fallback look within the test: only the submit's message can wake the dequeuers in time
    wakeup = started(QueueWakeup(client, Keys(settings.key_prefix), idle_recheck_s=LONG_WAIT_S))
    queue = tracked_queue_class(store, wakeup)
    lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]
    taken: list[tuple[str, str] | None] = []
    took_s: list[float] = []

    def dequeue() -> None:
        began = time.monotonic()
        try:
            taken.append(queue.lpop(lists, timeout=int(DEQUEUE_TIMEOUT_S)))
        except Exception:  # DequeueTimeout: nothing came
            taken.append(None)
        took_s.append(time.monotonic() - began)

    try:
        waiters = [threading.Thread(target=dequeue) for _ in range(3)]
        for thread in waiters:
            thread.start()
        time.sleep(1.5)  # all three idle, past their first look
        submitted = time.monotonic()
        create_request(redis.Redis.from_url(settings.redis_url), settings, new_request(settings, "r1"))
        deadline = time.monotonic() + 10
        while not taken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert taken == [(lists[0], "r1")]
        assert time.monotonic() - submitted < 1.0  # woken by the submit: no fallback look was due
        assert wakeup.heard >= 1
    finally:
        wakeup.stop()
        for thread in waiters:
            thread.join(LONG_WAIT_S)
    assert taken.count(None) == 2  # one submit woke one dequeuer; the other two timed out with nothing


def test_without_the_subscription_idle_dequeuers_poll() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    wakeup = QueueWakeup(unreachable, Keys("p"))
    wakeup.start()
    try:
        time.sleep(0.5)
        assert not wakeup.connected.is_set()
        assert wakeup.fallback_s == 0.1  # as often as before the wakeup existed
        began = time.monotonic()
        wakeup.wait_after(wakeup.heard, wakeup.fallback_s)
        assert time.monotonic() - began < 1.0
    finally:
        wakeup.stop()
