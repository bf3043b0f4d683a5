"""Per-request progress: patches become fal log entries, and ``should_stop`` reads the cancel flag.

A request decodes its image patch by patch (64 patches for a 64x checkpoint at any size); each
patch runs ``num_inference_steps`` sampling steps of the diffusion head. The log says exactly that:
``patch 12/64, 25 sampling steps each``. Both callbacks run once per patch and are best effort: a
Redis hiccup is logged and never aborts the generation (the outcome is recorded later, with retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from core.protocol import LogEntry, LogLevel
from core.requests.worker_store import WorkerRequestStore

logger = logging.getLogger(__name__)

# A progress log reads the cancel flag in its own round trip; a stop check this soon after it uses that
# reading instead of asking Redis again (the pipelines check right after reporting a step): one round
# trip per step instead of two, and a cancel is seen at most this much later.
CANCEL_FRESH_S = 0.05


class ProgressTracker:
    """Step callback and stop check for one request."""

    def __init__(
        self,
        store: WorkerRequestStore,
        request_id: str,
        num_inference_steps: int,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        is_lost: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.request_id = request_id
        self.num_inference_steps = num_inference_steps
        self.interval_s = interval_s
        self._clock = clock
        self.is_lost = is_lost  # True once this run no longer holds the request (its lease renewal was refused)
        self._last_logged: float | None = None
        self._cancel_read_at: float | None = None  # when a log last read the cancel flag (False then)
        self.patches_seen = 0

    def log(self, message: str, level: LogLevel = "INFO") -> None:
        if self.is_lost():
            return  # the request's log is the run's that holds it now
        try:
            cancel = self.store.append_log(self.request_id, LogEntry.now(message, level), read_cancel=True)
        except redis.RedisError as exc:
            logger.warning("progress log lost request_id=%s: %s", self.request_id, exc)
            return
        self._cancel_read_at = None if cancel else self._clock()

    def on_patch(self, patch: int, num_patches: int) -> None:
        """The pipeline's ``progress(patch, num_patches)``: at most one log entry per ``interval_s``.

        The first and the last patch are always logged; the last one says that decoding to pixels
        follows (the request is not done until its images are checked, encoded and stored).
        """
        self.patches_seen += 1
        now = self._clock()
        is_last = patch >= num_patches
        if patch > 1 and not is_last and self._last_logged is not None and now - self._last_logged < self.interval_s:
            return
        self._last_logged = now
        message = f"patch {patch}/{num_patches}, {self.num_inference_steps} sampling steps each"
        self.log(message + ("; decoding to pixels" if is_last else ""))

    def should_stop(self) -> bool:
        """``should_stop()``: True once the request's cancel flag is set, or once this run lost it."""
        if self.is_lost():
            return True
        read_at = self._cancel_read_at
        if read_at is not None and self._clock() - read_at < CANCEL_FRESH_S:
            return False  # a progress log just read it, unset
        try:
            return self.store.is_cancel_requested(self.request_id)
        except redis.RedisError as exc:
            logger.warning("cancel check failed request_id=%s: %s", self.request_id, exc)
            return False
