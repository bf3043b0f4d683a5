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


class CountingTaker:
    """The worker store's dequeue, counting the looks."""

    def __init__(self, store: WorkerRequestStore) -> None:
        self.store = store
        self.looks = 0
        self.lock = threading.Lock()

    def dequeue(self, queue_keys: list[str]) -> tuple[str, str] | None:
        with self.lock:
            self.looks += 1
        return self.store.dequeue(queue_keys)


def idle_dequeuers(queue: type, lists: list[str], count: int, timeout_s: float) -> tuple[list[threading.Thread], list]:
    taken: list[tuple[str, str] | None] = []

    def dequeue() -> None:
        try:
            taken.append(queue.lpop(lists, timeout=int(timeout_s)))
        except Exception:  # DequeueTimeout: nothing came
            taken.append(None)

    threads = [threading.Thread(target=dequeue) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, taken


def test_idle_dequeuers_look_one_at_a_time(make_settings: Callable[..., Settings]) -> None:
    """With nothing queued, one idle dequeuer looks per recheck, not every one of them (issue 21: the 320
    idle slots of a simulated worker each looked once a second, a thousand Redis commands a second)."""
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    taker = CountingTaker(WorkerRequestStore(client, settings))
    wakeup = started(QueueWakeup(client, Keys(settings.key_prefix), idle_recheck_s=0.25))
    lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]
    threads, taken = idle_dequeuers(tracked_queue_class(taker, wakeup), lists, 20, timeout_s=3)
    try:
        time.sleep(0.5)  # every dequeuer has made its first look
        first = taker.looks
        time.sleep(2.0)  # 8 rechecks are due meanwhile
        rechecks = taker.looks - first
    finally:
        wakeup.stop()
        for thread in threads:
            thread.join(LONG_WAIT_S)
    assert 20 <= first <= 23  # each one's first look, and the rechecks of the first 0.5 s
    assert 4 <= rechecks <= 12, rechecks  # one look per recheck (each dequeuer alone: 20 x 8 = 160)
    assert taken == [None] * 20


def test_a_backlog_nobody_announced_is_taken_by_every_idle_dequeuer(make_settings: Callable[..., Settings]) -> None:
    """Requests no submit announced (requeued by the recovery sweep) are found by the recheck, and each
    dequeuer that finds one wakes the next: the backlog goes at once, not one request per recheck."""
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = WorkerRequestStore(client, settings)
    # listening on another channel: the submits below are never heard, only the recheck finds them
    wakeup = started(QueueWakeup(client, Keys(settings.key_prefix + "-deaf"), idle_recheck_s=1.0))
    lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]
    threads, taken = idle_dequeuers(tracked_queue_class(store, wakeup), lists, 6, timeout_s=DEQUEUE_TIMEOUT_S)
    try:
        time.sleep(0.3)  # all idle, past their first look
        producer = redis.Redis.from_url(settings.redis_url)
        for index in range(4):
            create_request(producer, settings, new_request(settings, f"r{index}"))
        began = time.monotonic()
        deadline = began + 10
        while len([t for t in taken if t]) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        took_s = time.monotonic() - began
    finally:
        wakeup.stop()
        for thread in threads:
            thread.join(LONG_WAIT_S)
    assert sorted(t[1] for t in taken if t) == ["r0", "r1", "r2", "r3"]
    assert took_s < 1.8, took_s  # one recheck (at most 1 s away), then the chain: not 4 rechecks


def test_without_the_subscription_idle_dequeuers_poll() -> None:
    """With the subscription lost, an idle dequeuer looks every ``DEQUEUE_POLL_S`` (0.1 s, as often as
    before the wakeup existed), however long its own timeout."""
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    wakeup = QueueWakeup(unreachable, Keys("p"))
    wakeup.start()
    try:
        time.sleep(0.5)
        assert not wakeup.connected.is_set()
        assert wakeup.fallback_s == 0.1
        began = time.monotonic()
        for _ in range(5):
            wakeup.wait_after(wakeup.heard, LONG_WAIT_S)
        assert time.monotonic() - began < 1.5  # five looks 0.1 s apart, not one 30 s timeout
    finally:
        wakeup.stop()
