"""``SlotPool``: one worker process serving N requests at once (``BITDANCE_SIMULATED_SLOTS=N``).

Meant for the simulated model, whose "GPU time" is a wait: one box then emulates N GPU workers.
Each slot is a ``SlotWorker`` (``core.requests.rq_integration``) with its own name and its own
``TaskRunner`` (the real one), in a thread of its own, so ``/health`` counts N workers and every
request goes through the same start, lease, progress, cancel and complete steps as on a real
worker. The process has one set of background threads for all its slots (``worker.background``):
one heartbeat keeps every slot visible and its requests leased, one sweep, one webhook dispatcher.

The main thread owns the signals: the first SIGTERM/SIGINT lets each slot finish its current
request and stop; a second one exits at once (the leases then expire and the sweep requeues).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from core.requests.rq_integration import SlotWorker
from core.requests.worker_store import WorkerRequestStore
from core.webhooks.outbox import WebhookOutbox
from worker.background import RunningRequests, WorkerThreads
from worker.names import slot_name
from worker.tasks import TaskRunner, WorkerServices
from worker.wakeup import QueueWakeup

logger = logging.getLogger(__name__)


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
        self.workers: list[SlotWorker] = []
        members: list[tuple[str, RunningRequests]] = []
        self.wakeup = QueueWakeup(store.client, store.keys, name=f"queue-wakeup-{self.base_name}")  # one for all slots
        for index in range(slots):
            name = slot_name(self.base_name, index)
            slot_services = WorkerServices(**{**vars(services), "worker_name": name})
            runner = TaskRunner(slot_services)
            self.workers.append(SlotWorker(queues, runner, store, self.wakeup, name=name, connection=connection))
            members.append((name, runner))
        self.background = WorkerThreads(store, members, self.base_name, outbox, self.wakeup, info)
        self.stopping = threading.Event()

    def request_stop(self, signum: int, frame: Any) -> None:
        if self.stopping.is_set():
            logger.warning("second stop signal: exiting now (running requests will be requeued)")
            raise SystemExit(1)
        logger.info("stopping: each slot finishes its current request")
        self.stopping.set()
        for worker in self.workers:
            worker.request_slot_stop()
        self.wakeup.wake_all()  # the idle slots see their stop flags now

    def work(self, logging_level: str = "INFO") -> None:
        self.background.start()
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
            self.background.stop()
