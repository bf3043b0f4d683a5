"""Dynamic batching: a request that starts takes compatible queued requests into its generation.

Requests are compatible when they resolve to the same image size and step count (prompts, seeds,
guidance scales and image counts may differ: ``generate_batch`` keeps each request's own images),
and when, with a real model, the batch still fits its memory budget (``BatchMemory``): prompts are
padded to the batch's longest, so a long prompt takes few companions or none, and a short request
never joins a batch that a long one made too large. Companions are claimed with an atomic script
that also takes them out of their RQ list, so exactly one worker runs each; they are leased like any
running request, and if this worker dies the sweep requeues them (``core.requests.scripts.CLAIM``).
"""

from __future__ import annotations

import logging
from typing import Protocol

import redis
from pydantic import ValidationError

from core.protocol import RequestStatus
from core.requests.records import RequestRecord
from core.requests.scripts import AdmitOutcome, ClaimOutcome
from core.requests.worker_store import WorkerRequestStore
from core.schemas import BitDanceInput
from worker.validation import validate_input

logger = logging.getLogger(__name__)

SCAN_DEPTH = 64  # queued requests looked at per queue when filling a batch


class BatchMemory(Protocol):
    """What a batch may need, by the checkpoint's memory plan (``model.checkpoint.memory_plan.BatchMemoryLimit``)."""

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of the prompt's conditional row (chat template included)."""
        ...

    def fits(self, images: int, guided: bool, height: int, width: int, prompt_tokens: int) -> bool:
        """Whether a generation of these images, its longest prompt having ``prompt_tokens``, fits."""
        ...


def is_guided(payload: BitDanceInput) -> bool:
    """Whether the request adds unconditional rows (guidance is off at a scale of 1, as in ``model.sampler``)."""
    return payload.guidance_scale > 1.0


def claim_companions(
    store: WorkerRequestStore,
    worker: str,
    first: RequestRecord,
    parallel_num: int,
    max_images: int,
    memory: BatchMemory | None = None,
    attempt: str | None = None,
) -> list[RequestRecord]:
    """Claim queued requests that fit with ``first`` (already started), up to ``max_images`` in all and,
    given ``memory``, within its budget for the batch's longest prompt. They are leased to the run
    ``attempt`` (``first``'s).

    Queues are scanned in serving order (normal, then low). Any Redis error ends the scan: what was
    claimed so far is leased to this worker and will be run.
    """
    try:
        wanted = validate_input(first.input, parallel_num)
    except (ValidationError, ValueError):
        return []  # the first request fails on its own; nothing to batch with
    images = wanted.payload.num_images
    longest = memory.prompt_tokens(wanted.payload.prompt) if memory is not None else 0
    guided = is_guided(wanted.payload)
    height, width = wanted.shape.height, wanted.shape.width
    if memory is not None and not memory.fits(images, guided, height, width, longest):
        return []  # already past the budget alone: it runs alone
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
                joined_longest, joined_guided = longest, guided or is_guided(other.payload)
                if memory is not None:
                    joined_longest = max(longest, memory.prompt_tokens(other.payload.prompt))
                    if not memory.fits(images + other.payload.num_images, joined_guided, height, width, joined_longest):
                        continue  # its prompt would pad every row of the batch past the budget
                if store.admit(rid, defer=False) is AdmitOutcome.FULL:
                    continue  # its key runs its limit (BITDANCE_MAX_RUNNING_PER_KEY): it waits its turn
                if store.claim(rid, worker, queue, attempt) is ClaimOutcome.STARTED:
                    claimed.append(candidate)
                    images += other.payload.num_images
                    longest, guided = joined_longest, joined_guided
    except redis.RedisError as exc:
        logger.warning("batch scan stopped: %s", exc)
    return claimed
