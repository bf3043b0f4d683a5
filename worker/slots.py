"""``SlotPool``: one worker process serving N requests at once (``BITDANCE_SIMULATED_SLOTS=N``).

Meant for the simulated model, whose "GPU time" is a wait: one box then emulates N GPU workers.
Each slot is an RQ ``SimpleWorker`` with its own name and its own ``TaskRunner`` (the real one,
bound to the slot's thread), so ``/health`` counts N workers and every request goes through the
same start, lease, progress, cancel and complete steps as on a real worker. One heartbeat thread
keeps every slot visible and its requests leased; one sweeper thread runs the recovery sweep; one
dispatcher delivers webhooks.

The main thread owns the signals: the first SIGTERM/SIGINT lets each slot finish its current
request and stop; a second one exits at once (the leases then expire and the sweep requeues).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from core.requests.worker_store import WorkerRequestStore
from core.webhooks.outbox import WebhookDispatcher, WebhookOutbox
from worker.gpu_worker import Heartbeat, Sweeper, tracked_queue_class
from worker.names import slot_name
from worker.tasks import TaskRunner, WorkerServices, bind_runner
from worker.wakeup import QueueWakeup

logger = logging.getLogger(__name__)

IDLE_POLL_S = 2  # an idle slot looks at its stop flag this often


class SlotWorker(SimpleWorker):
    """One slot: an in-process RQ worker that runs in a thread of its own."""

    death_penalty_class = TimerDeathPenalty  # RQ's default job timeout uses SIGALRM: main thread only

    def __init__(self, queues: Any, runner: TaskRunner, **kwargs: Any) -> None:
        super().__init__(queues, **kwargs)
        self.runner = runner

    def _install_signal_handlers(self) -> None:
        """Nothing: the pool's main thread handles the signals for every slot."""

    def subscribe(self) -> None:
        """No per-slot pub/sub connection for RQ's remote commands: the pool is stopped by signals."""

    def unsubscribe(self) -> None:
        pass

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, returning ``None`` (so the work loop ends) once the pool asked this slot to stop."""
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=IDLE_POLL_S)
            if result is not None:
                return result
        return None

    def request_slot_stop(self) -> None:
        self._stop_requested = True

    def serve(self, logging_level: str) -> None:
        bind_runner(self.runner, this_thread_only=True)
        try:
            self.work(logging_level=logging_level)
        except Exception:
            logger.exception("slot %s stopped on an error", self.name)


class SlotPool:
    """N ``SlotWorker`` threads sharing one process's services (pipeline, stores, safety checker)."""

    def __init__(
        self,
        services: WorkerServices,
        store: WorkerRequestStore,
        outbox: WebhookOutbox,
        queues: list[str],
        slots: int,
        connection: Any,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.base_name = services.worker_name
        self.store = store
        self.workers: list[SlotWorker] = []
        self.wakeup = QueueWakeup(store.client, store.keys, name=f"queue-wakeup-{self.base_name}")  # one for all slots
        for index in range(slots):
            name = slot_name(self.base_name, index)
            slot_services = WorkerServices(**{**vars(services), "worker_name": name})
            runner = TaskRunner(slot_services)
            queue_class = tracked_queue_class(store, self.wakeup)
            self.workers.append(SlotWorker(queues, runner, name=name, connection=connection, queue_class=queue_class))
        members = [(w.name, w.runner) for w in self.workers]
        self.heartbeat_thread = Heartbeat(store, members, self.base_name, info)
        self.sweeper_thread = Sweeper(store, self.base_name)
        self.webhook_thread = WebhookDispatcher(outbox, name=f"webhooks-{self.base_name}")
        self.stopping = threading.Event()

    def request_stop(self, signum: int, frame: Any) -> None:
        if self.stopping.is_set():
            logger.warning("second stop signal: exiting now (running requests will be requeued)")
            raise SystemExit(1)
        logger.info("stopping: each slot finishes its current request")
        self.stopping.set()
        for worker in self.workers:
            worker.request_slot_stop()

    def work(self, logging_level: str = "INFO") -> None:
        self.heartbeat_thread.beat()  # visible before the first dequeue
        self.sweeper_thread.sweep()  # and requests a dead worker left are recovered first
        for background in (self.heartbeat_thread, self.sweeper_thread, self.webhook_thread, self.wakeup):
            background.start()
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        threads = [
            threading.Thread(target=w.serve, args=(logging_level,), name=w.name, daemon=True) for w in self.workers
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            self.heartbeat_thread.stop()
            self.sweeper_thread.stop()
            self.webhook_thread.stop()
            self.wakeup.stop()
            for worker in self.workers:
                try:
                    self.store.remove_worker(worker.name)
                except Exception:  # best effort: the heartbeat entry also ages out
                    logger.warning("could not unregister slot %s", worker.name)
