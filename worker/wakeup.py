"""``QueueWakeup``: idle workers wake when a request is submitted, instead of on their next poll.

Submits publish on ``Keys.queue_grew`` (in the same atomic step that enqueues). One thread per
worker process listens there and wakes one idle dequeuer per message, so a request starts within a
Redis round trip of its submit rather than up to ``DEQUEUE_POLL_S`` later. Looking anyway stays as
the fallback (requests requeued by the recovery sweep publish nothing here), done by one idle
dequeuer at a time while subscribed: the listener wakes one every ``IDLE_RECHECK_S``, and a
dequeuer that finds a request that way passes the wake on to the next (``pass_on``). Without the
subscription every idle dequeuer looks every ``DEQUEUE_POLL_S``, as before the wakeup existed.
(Each idle slot of a 320-slot simulated worker used to look on its own once a second: with RQ's
heartbeats, ~2,900 Redis commands a second with nothing queued; issue 21.)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from core.requests.records import Keys

logger = logging.getLogger(__name__)

DEQUEUE_POLL_S = 0.1  # without the subscription: as often as an idle worker looked before
IDLE_RECHECK_S = 1.0  # with it: a look now and then, for requests no submit announced
RECONNECT_S = 1.0
LISTEN_TIMEOUT_S = 1.0


class QueueWakeup(threading.Thread):
    """Counts the submits heard; ``wait_after(seen, timeout)`` returns once one more was heard."""

    def __init__(
        self, client: redis.Redis, keys: Keys, name: str = "queue-wakeup", idle_recheck_s: float = IDLE_RECHECK_S
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.idle_recheck_s = idle_recheck_s
        self.client = client
        self.channel = keys.queue_grew
        self.connected = threading.Event()
        self.stopped = threading.Event()
        self.failures = 0  # subscriptions lost so far
        self._heard = 0
        self._changed = threading.Condition()

    @property
    def heard(self) -> int:
        """How many submits were heard so far (read before looking at the queue, then passed to ``wait_after``)."""
        return self._heard

    @property
    def fallback_s(self) -> float:
        """How often one idle dequeuer is woken to look anyway."""
        return self.idle_recheck_s if self.connected.is_set() else DEQUEUE_POLL_S

    def wait_after(self, seen: int, timeout_s: float) -> None:
        """Sleep until a submit after ``seen`` is heard (or this dequeuer's turn to look anyway comes), or
        ``timeout_s`` passes; without the subscription (or the listener), at most ``DEQUEUE_POLL_S``."""
        if not self.connected.is_set() or not self.is_alive():
            timeout_s = min(timeout_s, DEQUEUE_POLL_S)
        with self._changed:
            self._changed.wait_for(lambda: self._heard != seen or self.stopped.is_set(), timeout_s)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                self.failures += 1
                logger.warning("queue wakeup: lost the subscription (%s); polling until it is back", exc)
            except Exception:  # the thread's boundary: anything else is logged and the listener restarted
                self.failures += 1
                logger.exception("queue wakeup failed; polling until it is back")
            self.connected.clear()
            self._wake(everyone=True)  # whatever was announced meanwhile is found by looking
            self.stopped.wait(RECONNECT_S)

    @property
    def is_down(self) -> bool:
        """Not subscribed since its last failure (idle dequeuers poll meanwhile), or ended unstopped."""
        ended = self.ident is not None and not self.is_alive() and not self.stopped.is_set()
        return ended or (self.failures > 0 and not self.connected.is_set())

    def _listen(self) -> None:
        pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self.connected.set()
            recheck_at = time.monotonic() + self.idle_recheck_s
            while not self.stopped.is_set():
                wait_s = min(LISTEN_TIMEOUT_S, max(recheck_at - time.monotonic(), 0.0))
                message = pubsub.get_message(timeout=wait_s)
                if message is not None and message.get("type") == "message":
                    self._wake(everyone=False)
                if time.monotonic() >= recheck_at:
                    self._wake(everyone=False)  # one idle dequeuer looks anyway
                    recheck_at = time.monotonic() + self.idle_recheck_s
        finally:
            pubsub.close()

    def pass_on(self) -> None:
        """A dequeuer found a request no submit announced (a backlog): one more idle dequeuer looks."""
        self._wake(everyone=False)

    def wake_all(self) -> None:
        """Every idle dequeuer looks now (the pool is stopping: each sees its stop flag)."""
        self._wake(everyone=True)

    def _wake(self, everyone: bool) -> None:
        with self._changed:
            self._heard += 1
            if everyone:
                self._changed.notify_all()
            else:
                self._changed.notify(1)  # one request: one idle dequeuer looks (not all 64 slots)

    def stop(self) -> None:
        self.stopped.set()
        self._wake(everyone=True)
