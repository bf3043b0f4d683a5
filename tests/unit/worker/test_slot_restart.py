"""A slot whose RQ loop ends on a Redis error starts it again: a 320-slot worker hit by a burst lost 215 slots
to ``MaxConnectionsError`` on their first command, and the process's heartbeat still announced them (issue 21)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from core.requests.rq_integration import SlotWorker
from core.settings import Settings

POOL_SIZE = 2


class NoRequests:
    """The taker of an empty queue."""

    def dequeue(self, queue_keys: list[str]) -> tuple[str, str] | None:
        return None


class NoSubmits:
    """A wake-up that hears nothing: the dequeuer looks again every ``RECHECK_S`` (its fallback)."""

    heard = 0
    RECHECK_S = 0.05

    def wait_after(self, seen: int, timeout_s: float) -> None:
        time.sleep(min(timeout_s, self.RECHECK_S))

    def pass_on(self) -> None:
        raise AssertionError("no request was queued")


class NeverRun:
    last_outcome = None

    def run(self, request_id: str) -> str:
        raise AssertionError("no request was queued")


def _alive(client: redis.Redis, key: str) -> bool:
    return bool(client.exists(key)) and not client.hexists(key, "death")


def test_a_slot_refused_a_connection_at_its_start_comes_back(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    pool = redis.ConnectionPool.from_url(settings.redis_url, max_connections=POOL_SIZE)
    connection = redis.Redis(connection_pool=pool)
    observer = redis.Redis.from_url(settings.redis_url)
    slot = SlotWorker(
        [f"{settings.key_prefix}-restart"], NeverRun(), NoRequests(), NoSubmits(), name="restart-slot",
        connection=connection,
    )  # fmt: skip
    held = [pool.get_connection() for _ in range(POOL_SIZE)]  # the pool is full when the slot starts
    thread = threading.Thread(target=slot.serve, args=("WARNING",), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # the slot's first command was refused meanwhile
        assert not _alive(observer, slot.key)
        for connection_held in held:
            pool.release(connection_held)
        deadline = time.monotonic() + 10
        while not _alive(observer, slot.key) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(observer, slot.key), "the slot did not start again once connections were free"
        assert thread.is_alive()
    finally:
        slot.request_slot_stop()
        thread.join(10)
        observer.close()
        pool.disconnect()
    assert not thread.is_alive()
