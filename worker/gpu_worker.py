"""``GpuWorker``: an RQ ``SimpleWorker`` (jobs run in this process: no fork, CUDA state survives)
plus a heartbeat thread that keeps this worker visible, its running requests leased, and sweeps,
and a thread that delivers due webhooks from the outbox.

SIGTERM/SIGINT once: finish the current request, then exit (RQ's warm shutdown). Twice: exit now;
the request's lease then expires and the recovery sweep requeues it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import redis
from rq import SimpleWorker

from server.queue.webhook_outbox import WebhookDispatcher, WebhookOutbox
from server.queue.worker_store import WorkerJobStore
from worker import recovery
from worker.tasks import TaskRunner

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Every ``lease_ttl_s / 3``: worker heartbeat, leases of the running requests, recovery sweep.

    ``members`` are the (worker name, runner) pairs this process serves: one for a GPU worker, one
    per slot for a multi-slot simulated worker.
    """

    def __init__(
        self,
        jobs: WorkerJobStore,
        members: Sequence[tuple[str, TaskRunner]],
        name: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.jobs = jobs
        self.members = list(members)
        self.worker_name = name
        self.info = info
        self.interval_s = max(jobs.settings.lease_ttl_s / 3, 0.2)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.interval_s)

    def beat(self) -> None:
        try:
            for worker_name, runner in self.members:
                self.jobs.heartbeat(worker_name, self.info)
                for rid in runner.current_requests:
                    self.jobs.refresh_lease(rid, worker_name)
            if self.jobs.try_acquire_sweep(self.worker_name):
                recovery.sweep(self.jobs)
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)
        except Exception:  # the thread must survive anything a sweep throws
            logger.exception("heartbeat error")

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


class GpuWorker(SimpleWorker):
    """One worker per accelerator; serves its queues in order (normal before low)."""

    def __init__(
        self,
        queues: Any,
        runner: TaskRunner,
        jobs: WorkerJobStore,
        outbox: WebhookOutbox,
        info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, **kwargs)
        self.runner = runner
        self.jobs = jobs
        self.heartbeat_thread = Heartbeat(jobs, [(self.name, runner)], self.name, info)
        self.webhook_thread = WebhookDispatcher(outbox, name=f"webhooks-{self.name}")

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self.heartbeat_thread.beat()  # visible (and swept) before the first dequeue
        self.heartbeat_thread.start()
        self.webhook_thread.start()
        outcome_filter = JobOutcomeLogFilter(self.runner)
        self.log.addFilter(outcome_filter)
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.log.removeFilter(outcome_filter)
            self.heartbeat_thread.stop()
            self.webhook_thread.stop()
            try:
                self.jobs.remove_worker(self.name)
            except redis.RedisError:
                logger.warning("could not unregister worker %s", self.name)
