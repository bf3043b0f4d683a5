"""``WorkerThreads``: what a worker process runs beside its work loop, started and stopped together.

Four threads, one set per process whether it serves one worker (``GpuWorker``) or N slots
(``SlotPool``): the heartbeat (its workers visible, their running requests leased), the recovery
sweep (on a thread of its own, so that however long a sweep takes, leases are renewed on time), the
delivery of due webhooks from the outbox, and the queue wake-up (idle dequeuers woken by submits).
The process is visible and the requests dead workers left are recovered before its first dequeue;
when it stops, its workers leave the heartbeat set at once instead of ageing out.

A thread outlives whatever one round of its work raises (issue 19: an uncaught error ended a
background task for good): it logs, waits (the heartbeat keeps its own pace, the lease depends on it;
the others back off, doubling up to ``BACKOFF_MAX_S``) and goes on. Threads failing or dead are named
in each heartbeat's worker info as ``threads_down``, which ``/health`` shows under ``live_workers``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis

from core.requests.worker_store import WorkerRequestStore
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import WebhookOutbox
from worker import recovery
from worker.wakeup import QueueWakeup

logger = logging.getLogger(__name__)

BACKOFF_MAX_S = 10.0  # a failing thread (but the heartbeat) retries at most this far apart


class PeriodicThread(threading.Thread, ABC):
    """A daemon thread that runs ``tick`` at once, then every ``interval_s`` until ``stop``; a ``tick``
    that raises is logged and retried after a backoff (``retry_after_s``), never the thread's end."""

    backs_off = True  # False: retry at the usual interval (the heartbeat)

    def __init__(self, name: str, interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.failures = 0  # ticks in a row that raised
        self.last_error = ""

    def run(self) -> None:
        while not self.stopped.is_set():
            self.tick_guarded()
            self.stopped.wait(self.retry_after_s() if self.failures else self.interval_s)

    def tick_guarded(self) -> None:
        """One ``tick``: a Redis error is a warning line, anything else a traceback (once per run of failures)."""
        try:
            self.tick()
        except redis.RedisError as exc:
            self._failed(exc)
            logger.warning("%s: Redis unavailable (%s); %d failure(s) in a row", self.name, exc, self.failures)
        except Exception as exc:  # the thread's boundary: it must survive anything one tick throws
            self._failed(exc)
            if self.failures == 1:
                logger.exception("%s failed; retrying in %.1fs", self.name, self.retry_after_s())
            else:
                logger.warning("%s failed again (%d in a row: %s)", self.name, self.failures, self.last_error)
        else:
            if self.failures:
                logger.warning("%s is running again after %d failures", self.name, self.failures)
            self.failures, self.last_error = 0, ""

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def retry_after_s(self) -> float:
        if not self.backs_off:
            return self.interval_s
        return min(self.interval_s * 2 ** (self.failures - 1), max(self.interval_s, BACKOFF_MAX_S))

    @property
    def is_down(self) -> bool:
        """Failing, or ended (it only ends when stopped)."""
        return self.failures > 0 or (self.ident is not None and not self.is_alive() and not self.stopped.is_set())

    @abstractmethod
    def tick(self) -> None:
        """One round of the thread's work (each subclass's own)."""

    def stop(self) -> None:
        self.stopped.set()


class RunningRequests(Protocol):
    """What the heartbeat reads of a worker's runner (``worker.tasks.TaskRunner``): the (request id,
    attempt token) pairs it runs, and where it hears of a run that lost its request."""

    current_leases: tuple[tuple[str, str], ...]

    def lose(self, request_id: str, attempt: str) -> None: ...


class Heartbeat(PeriodicThread):
    """Every ``lease_ttl_s / 3``: worker heartbeat and the leases of the running requests.

    A lease is renewed only for the run that holds it: a worker stalled past its lease (paused, swapped
    out) whose request was requeued and taken by another gets a refusal, and its runner is told to stop
    that run and discard what it made (issue 19).

    ``members`` are the (worker name, runner) pairs this process serves: one for a GPU worker, one
    per slot for a multi-slot simulated worker. ``threads_down`` (set by ``WorkerThreads``) names the
    process's threads that cannot run; they go into the worker info of each beat.
    """

    backs_off = False  # a late heartbeat lets the leases of running requests expire

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
        self.threads_down: Callable[[], list[str]] = list

    def tick(self) -> None:
        down = self.threads_down()
        info = {**self.info, "threads_down": down} if self.info is not None and down else self.info
        self.store.heartbeat_all([worker_name for worker_name, _ in self.members], info)
        for _, runner in self.members:
            for rid, attempt in runner.current_leases:
                if not self.store.refresh_lease(rid, attempt):  # requeued or completed since (a stalled worker)
                    runner.lose(rid, attempt)

    def beat(self) -> None:
        """One beat now (before the first dequeue), failures logged as the thread logs them."""
        self.tick_guarded()


class Sweeper(PeriodicThread):
    """Every ``sweep_interval_s``: the recovery sweep, when this worker holds the fleet's sweep lock."""

    def __init__(self, store: WorkerRequestStore, name: str) -> None:
        super().__init__(f"sweeper-{name}", max(store.settings.sweep_interval_s, 0.1))
        self.store = store
        self.worker_name = name

    def tick(self) -> None:
        if self.store.try_acquire_sweep(self.worker_name):
            recovery.sweep(self.store)

    def sweep(self) -> None:
        """One sweep now (before the first dequeue), failures logged as the thread logs them."""
        self.tick_guarded()


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
        self.heartbeat.threads_down = self.down

    def down(self) -> list[str]:
        """Names of the threads failing or ended (``threads_down`` in the heartbeat's worker info)."""
        found = [thread.name for thread in (self.heartbeat, self.sweeper) if thread.is_down]
        if self.wakeup.is_down:
            found.append(self.wakeup.name)
        if self.webhooks.ident is not None and not self.webhooks.is_alive() and not self.webhooks.stopped.is_set():
            found.append(self.webhooks.name)
        return found

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
