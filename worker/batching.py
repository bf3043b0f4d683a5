"""Dynamic batching: a request that starts takes compatible queued requests into its generation.

Requests are compatible when they resolve to the same image size and step count (prompts, seeds,
guidance scales and image counts may differ: ``generate_batch`` keeps each request's own images).
Companions are claimed with an atomic script that also takes them out of their RQ list, so exactly
one worker runs each; they are leased like any running request, and if this worker dies the sweep
requeues them (``core.requests.scripts.CLAIM``).
"""

from __future__ import annotations

import logging

import redis
from pydantic import ValidationError

from core.protocol import RequestStatus
from core.requests.records import RequestRecord
from core.requests.scripts import ClaimOutcome
from core.requests.worker_store import WorkerRequestStore
from worker.validation import validate_input

logger = logging.getLogger(__name__)

SCAN_DEPTH = 64  # queued requests looked at per queue when filling a batch


def claim_companions(
    store: WorkerRequestStore,
    worker: str,
    first: RequestRecord,
    parallel_num: int,
    max_images: int,
) -> list[RequestRecord]:
    """Claim queued requests that fit with ``first`` (already started), up to ``max_images`` in all.

    Queues are scanned in serving order (normal, then low). Any Redis error ends the scan: what was
    claimed so far is leased to this worker and will be run.
    """
    try:
        wanted = validate_input(first.input, parallel_num)
    except (ValidationError, ValueError):
        return []  # the first request fails on its own; nothing to batch with
    images = wanted.payload.num_images
    claimed: list[RequestRecord] = []
    settings = store.settings
    try:
        for queue in (settings.queue_normal, settings.queue_low):
            for rid in store.queued_ids(queue, SCAN_DEPTH):
                if images >= max_images:
                    return claimed
                candidate = store.get(rid)
                if candidate is None or candidate.status is not RequestStatus.IN_QUEUE:
                    continue
                try:
                    other = validate_input(candidate.input, parallel_num)
                except (ValidationError, ValueError):
                    continue  # it gets its own error when it runs alone
                if other.shape != wanted.shape:
                    continue
                if images + other.payload.num_images > max_images:
                    continue
                if store.claim(rid, worker, queue) is ClaimOutcome.STARTED:
                    claimed.append(candidate)
                    images += other.payload.num_images
    except redis.RedisError as exc:
        logger.warning("batch scan stopped: %s", exc)
    return claimed
