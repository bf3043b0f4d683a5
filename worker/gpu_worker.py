"""``GpuWorker``: one worker per accelerator, an RQ worker that runs its requests in this process (no
fork: CUDA state survives; ``core.requests.rq_integration.RequestWorker``), with the process's
background threads beside its work loop (``worker.background``: heartbeat and leases, recovery
sweep, webhooks, queue wake-up).

Requests are taken off the RQ lists with ``WorkerRequestStore.dequeue`` (``TrackedQueue``), which notes
each one as taken in the same step: if this worker dies before starting it, the sweep puts it back.

SIGTERM/SIGINT once: finish the current request, then exit (RQ's warm shutdown). Twice: exit now;
the request's lease then expires and the recovery sweep requeues it.
"""

from __future__ import annotations

from typing import Any

from core.requests.rq_integration import RequestWorker
from core.requests.worker_store import WorkerRequestStore
from core.webhooks.outbox import WebhookOutbox
from worker.background import WorkerThreads
from worker.tasks import TaskRunner
from worker.wakeup import QueueWakeup


class GpuWorker(RequestWorker):
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
        wakeup = QueueWakeup(store.client, store.keys)
        super().__init__(queues, runner, store, wakeup, **kwargs)
        self.background = WorkerThreads(store, [(self.name, runner)], self.name, outbox, wakeup, info)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self.background.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self.background.stop()
