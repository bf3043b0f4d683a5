"""``GpuWorker``: an RQ ``SimpleWorker`` (jobs run in this process: no fork, CUDA state survives) plus
three threads: the heartbeat (this worker visible, its running requests leased), the recovery sweep,
and the delivery of due webhooks from the outbox. The sweep has its own thread so that however long
it takes, leases are renewed on time.

Requests are taken off the RQ lists with ``WorkerRequestStore.dequeue`` (``TrackedQueue``), which notes
each one as taken in the same step: if this worker dies before starting it, the sweep puts it back.

SIGTERM/SIGINT once: finish the current request, then exit (RQ's warm shutdown). Twice: exit now;
the request's lease then expires and the recovery sweep requeues it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout

from core.requests.worker_store import WorkerRequestStore
from core.webhooks.outbox import WebhookDispatcher, WebhookOutbox
from worker import recovery
from worker.tasks import TaskRunner
from worker.wakeup import QueueWakeup

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Every ``lease_ttl_s / 3``: worker heartbeat and the leases of the running requests.

    ``members`` are the (worker name, runner) pairs this process serves: one for a GPU worker, one
    per slot for a multi-slot simulated worker.
    """

    def __init__(
        self,
        store: WorkerRequestStore,
        members: Sequence[tuple[str, TaskRunner]],
        name: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.store = store
        self.members = list(members)
        self.worker_name = name
        self.info = info
        self.interval_s = max(store.settings.lease_ttl_s / 3, 0.2)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.interval_s)

    def beat(self) -> None:
        try:
            for worker_name, runner in self.members:
                self.store.heartbeat(worker_name, self.info)
                for rid in runner.current_requests:
                    self.store.refresh_lease(rid, worker_name)
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()


class JobOutcomeLogFilter(logging.Filter):
    """RQ logs "Job OK" (and "Successfully completed") for every job function that returns, and ours
    return for cancelled and failed requests too: those lines name the request's real outcome instead.
    """

    def __init__(self, runner: TaskRunner) -> None:
        super().__init__()
        self.runner = runner

    def filter(self, record: logging.LogRecord) -> bool:
        last = self.runner.last_outcome
        if last is None or last[1] == "ok":
            return True
        request_id, outcome = last
        message = record.getMessage()
        if request_id in message and ("Job OK" in message or "Successfully completed" in message):
            message = message.replace("Job OK", f"Job ended: {outcome}")
            record.msg, record.args = message.replace("Successfully completed", f"Ended ({outcome})"), ()
        return True


class Sweeper(threading.Thread):
    """Every ``sweep_interval_s``: the recovery sweep, when this worker holds the fleet's sweep lock."""

    def __init__(self, store: WorkerRequestStore, name: str) -> None:
        super().__init__(name=f"sweeper-{name}", daemon=True)
        self.store = store
        self.worker_name = name
        self.interval_s = max(store.settings.sweep_interval_s, 0.1)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sweep()
            self.stopped.wait(self.interval_s)

    def sweep(self) -> None:
        try:
            if self.store.try_acquire_sweep(self.worker_name):
                recovery.sweep(self.store)
        except redis.RedisError as exc:
            logger.warning("recovery sweep failed: %s", exc)
        except Exception:  # the thread must survive anything a sweep throws
            logger.exception("recovery sweep error")

    def stop(self) -> None:
        self.stopped.set()


def tracked_queue_class(store: WorkerRequestStore, wakeup: QueueWakeup) -> type[Queue]:
    """RQ's ``Queue`` whose dequeue goes through ``store.dequeue`` (RQ's own pops leave no trace; a
    blocking pop cannot also note what it took), waiting for ``wakeup`` while the queues are empty."""

    class TrackedQueue(Queue):
        @classmethod
        def lpop(cls, queue_keys: Sequence[str], timeout: int | None, connection: Any = None) -> Any:
            """RQ's contract: (list key, job id); None when empty and ``timeout`` is None, else waits up
            to ``timeout`` seconds (woken by submits) and raises ``DequeueTimeout``."""
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                seen = wakeup.heard  # before looking: a submit heard after this wakes the wait below
                taken = store.dequeue(list(queue_keys))
                if taken is not None or deadline is None:
                    return taken
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise DequeueTimeout(timeout, queue_keys)
                wakeup.wait_after(seen, min(left_s, wakeup.fallback_s))

        @classmethod
        def lmove(cls, connection: Any, queue_key: str, timeout: int | None) -> Any:
            return cls.lpop([queue_key], timeout, connection)

    return TrackedQueue


class GpuWorker(SimpleWorker):
    """One worker per accelerator; serves its queues in order (normal before low)."""

    def __init__(
        self,
        queues: Any,
        runner: TaskRunner,
        store: WorkerRequestStore,
        outbox: WebhookOutbox,
        info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.wakeup = QueueWakeup(store.client, store.keys)
        kwargs.setdefault("queue_class", tracked_queue_class(store, self.wakeup))
        super().__init__(queues, **kwargs)
        self.runner = runner
        self.store = store
        self.heartbeat_thread = Heartbeat(store, [(self.name, runner)], self.name, info)
        self.sweeper_thread = Sweeper(store, self.name)
        self.webhook_thread = WebhookDispatcher(outbox, name=f"webhooks-{self.name}")

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self.heartbeat_thread.beat()  # visible before the first dequeue
        self.sweeper_thread.sweep()  # and requests a dead worker left are recovered first
        for thread in (self.heartbeat_thread, self.sweeper_thread, self.webhook_thread, self.wakeup):
            thread.start()
        outcome_filter = JobOutcomeLogFilter(self.runner)
        self.log.addFilter(outcome_filter)
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.log.removeFilter(outcome_filter)
            self.heartbeat_thread.stop()
            self.sweeper_thread.stop()
            self.webhook_thread.stop()
            self.wakeup.stop()
            try:
                self.store.remove_worker(self.name)
            except redis.RedisError:
                logger.warning("could not unregister worker %s", self.name)
