"""``WorkerThreads``: what a worker process runs beside its work loop, started and stopped together.

Four threads, one set per process whether it serves one worker (``GpuWorker``) or N slots
(``SlotPool``): the heartbeat (its workers visible, their running requests leased), the recovery
sweep (on a thread of its own, so that however long a sweep takes, leases are renewed on time), the
delivery of due webhooks from the outbox, and the queue wake-up (idle dequeuers woken by submits).
The process is visible and the requests dead workers left are recovered before its first dequeue;
when it stops, its workers leave the heartbeat set at once instead of ageing out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from core.requests.worker_store import WorkerRequestStore
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import WebhookOutbox
from worker import recovery
from worker.wakeup import QueueWakeup

logger = logging.getLogger(__name__)


class PeriodicThread(threading.Thread):
    """A daemon thread that runs ``tick`` at once, then every ``interval_s`` until ``stop``."""

    def __init__(self, name: str, interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.tick()
            self.stopped.wait(self.interval_s)

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()


class RunningRequests(Protocol):
    """What the heartbeat reads of a worker's runner (``worker.tasks.TaskRunner``)."""

    current_requests: tuple[str, ...]


class Heartbeat(PeriodicThread):
    """Every ``lease_ttl_s / 3``: worker heartbeat and the leases of the running requests.

    ``members`` are the (worker name, runner) pairs this process serves: one for a GPU worker, one
    per slot for a multi-slot simulated worker.
    """

    def __init__(
        self,
        store: WorkerRequestStore,
        members: Sequence[tuple[str, RunningRequests]],
        name: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"heartbeat-{name}", max(store.settings.lease_ttl_s / 3, 0.2))
        self.store = store
        self.members = list(members)
        self.info = info

    def tick(self) -> None:
        self.beat()

    def beat(self) -> None:
        try:
            for worker_name, runner in self.members:
                self.store.heartbeat(worker_name, self.info)
                for rid in runner.current_requests:
                    self.store.refresh_lease(rid, worker_name)
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)


class Sweeper(PeriodicThread):
    """Every ``sweep_interval_s``: the recovery sweep, when this worker holds the fleet's sweep lock."""

    def __init__(self, store: WorkerRequestStore, name: str) -> None:
        super().__init__(f"sweeper-{name}", max(store.settings.sweep_interval_s, 0.1))
        self.store = store
        self.worker_name = name

    def tick(self) -> None:
        self.sweep()

    def sweep(self) -> None:
        try:
            if self.store.try_acquire_sweep(self.worker_name):
                recovery.sweep(self.store)
        except redis.RedisError as exc:
            logger.warning("recovery sweep failed: %s", exc)
        except Exception:  # the thread must survive anything a sweep throws
            logger.exception("recovery sweep error")


class WorkerThreads:
    """The background threads of one worker process named ``name``, serving ``members``."""

    def __init__(
        self,
        store: WorkerRequestStore,
        members: Sequence[tuple[str, RunningRequests]],
        name: str,
        outbox: WebhookOutbox,
        wakeup: QueueWakeup,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.member_names = [member_name for member_name, _ in members]
        self.heartbeat = Heartbeat(store, members, name, info)
        self.sweeper = Sweeper(store, name)
        self.webhooks = WebhookDispatcher(outbox, name=f"webhooks-{name}")
        self.wakeup = wakeup

    def start(self) -> None:
        self.heartbeat.beat()  # visible before the first dequeue
        self.sweeper.sweep()  # and requests a dead worker left are recovered first
        for thread in (self.heartbeat, self.sweeper, self.webhooks, self.wakeup):
            thread.start()

    def stop(self) -> None:
        """Stop the threads and take the workers out of the heartbeat set (best effort: a worker that
        cannot be removed now ages out of it)."""
        self.heartbeat.stop()
        self.sweeper.stop()
        self.webhooks.stop()
        self.wakeup.stop()
        for member_name in self.member_names:
            try:
                self.store.remove_worker(member_name)
            except redis.RedisError:
                logger.warning("could not unregister worker %s", member_name)
