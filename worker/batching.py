"""Dynamic batching: a request that starts takes compatible queued requests into its generation.

Requests are compatible when they resolve to the same image size and step count (prompts, seeds,
guidance scales and image counts may differ: ``generate_batch`` keeps each request's own images).
Companions are claimed with an atomic script that also takes them out of their RQ list, so exactly
one worker runs each; they are leased like any running request, and if this worker dies the sweep
requeues them (``server.queue.scripts.CLAIM``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from model.resolutions import resolve_image_size
from server.protocol import JobStatus
from server.queue.records import RequestRecord
from server.queue.worker_store import WorkerJobStore
from server.schemas import BitDanceInput

logger = logging.getLogger(__name__)

SCAN_DEPTH = 64  # queued requests looked at per queue when filling a batch


@dataclass(frozen=True)
class BatchShape:
    """What requests of one batch must share."""

    height: int
    width: int
    steps: int

    @classmethod
    def of(cls, payload: BitDanceInput, parallel_num: int) -> BatchShape:
        height, width = resolve_image_size(payload.image_size_value(), parallel_num)
        return cls(height, width, payload.num_inference_steps)


def claim_companions(
    jobs: WorkerJobStore,
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
        payload = BitDanceInput.model_validate(first.input)
        shape = BatchShape.of(payload, parallel_num)
    except (ValidationError, ValueError):
        return []  # the first request fails on its own; nothing to batch with
    images = payload.num_images
    claimed: list[RequestRecord] = []
    settings = jobs.settings
    try:
        for queue in (settings.queue_normal, settings.queue_low):
            for rid in jobs.queued_ids(queue, SCAN_DEPTH):
                if images >= max_images:
                    return claimed
                candidate = jobs.get(rid)
                if candidate is None or candidate.status is not JobStatus.IN_QUEUE:
                    continue
                try:
                    other = BitDanceInput.model_validate(candidate.input)
                    if BatchShape.of(other, parallel_num) != shape:
                        continue
                except (ValidationError, ValueError):
                    continue  # it gets its own error when it runs alone
                if images + other.num_images > max_images:
                    continue
                if jobs.claim(rid, worker, queue) == "started":
                    claimed.append(candidate)
                    images += other.num_images
    except redis.RedisError as exc:
        logger.warning("batch scan stopped: %s", exc)
    return claimed
