"""The sweep for requests that would otherwise be lost (rq's abandoned-job idea, our own state).

- IN_PROGRESS whose worker lease expired (worker killed, OOM, host lost): requeued at the front
  once (``Settings.max_requeues``), then COMPLETED with ``runner_disconnected`` (503); a request
  whose cancel was asked for completes as cancelled instead.
- IN_QUEUE past its ``x-fal-request-timeout`` start deadline: COMPLETED with 504 request_timeout.
- IN_QUEUE but taken off its RQ list by a worker that died before starting it: pushed back after a
  grace period (workers dequeue with ``WorkerRequestStore.dequeue``, which notes what they took).

Its cost follows the number of running, taken or overdue requests, never the queue's length. Any
worker may run it, on its own thread (``worker.background.Sweeper``), apart from the heartbeat that
renews leases; a Redis lock keeps it to one sweep per interval across the fleet.
"""

from __future__ import annotations

import logging

from core.requests.scripts import CancelOutcome, RecoverOutcome
from core.requests.worker_store import WorkerRequestStore

logger = logging.getLogger(__name__)


def sweep(store: WorkerRequestStore) -> dict[str, str]:
    """Run one sweep; returns {request_id: outcome} for the requests it changed."""
    changed: dict[str, str] = {}
    for rid, outcome in store.recover_orphans().items():
        if outcome not in (RecoverOutcome.ALIVE, RecoverOutcome.SKIP):
            logger.warning("recovered orphaned request request_id=%s outcome=%s", rid, outcome)
            changed[rid] = outcome.value
    for rid, queued_outcome in store.recover_queued().items():
        if queued_outcome in (CancelOutcome.CANCELLED, RecoverOutcome.REQUEUED):
            logger.warning("recovered queued request request_id=%s outcome=%s", rid, queued_outcome)
            changed[rid] = "request_timeout" if queued_outcome is CancelOutcome.CANCELLED else queued_outcome.value
    if released := store.release_deferred():  # deferred requests whose key has room (a worker died after ending one)
        logger.info("released %d deferred request(s)", released)
    return changed
