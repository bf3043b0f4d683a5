"""Per-request progress: decoding steps become fal log entries, and ``should_stop`` reads the cancel flag.

Both are called by the pipeline once per decoding step. They are best effort: a Redis hiccup is
logged and never aborts the generation (the outcome is recorded later, with retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from server.protocol import LogEntry, LogLevel
from server.queue.worker_store import WorkerJobStore

logger = logging.getLogger(__name__)


class ProgressTracker:
    """Step callback and stop check for one request."""

    def __init__(
        self,
        jobs: WorkerJobStore,
        request_id: str,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.request_id = request_id
        self.interval_s = interval_s
        self._clock = clock
        self._last_logged: float | None = None
        self.steps_seen = 0

    def log(self, message: str, level: LogLevel = "INFO") -> None:
        try:
            self.jobs.append_log(self.request_id, LogEntry.now(message, level))
        except redis.RedisError as exc:
            logger.warning("progress log lost request_id=%s: %s", self.request_id, exc)

    def on_step(self, step: int, total: int) -> None:
        """``progress(step, total)``: one log entry per step, at most one per ``interval_s``.

        The first and the last step are always logged.
        """
        self.steps_seen += 1
        now = self._clock()
        is_edge = step <= 1 or step >= total
        if not is_edge and self._last_logged is not None and now - self._last_logged < self.interval_s:
            return
        self._last_logged = now
        percent = int(100 * step / total) if total else 100
        self.log(f"Step {step}/{total} ({percent}%)")

    def should_stop(self) -> bool:
        """``should_stop()``: True once the request's cancel flag is set."""
        try:
            return self.jobs.is_cancel_requested(self.request_id)
        except redis.RedisError as exc:
            logger.warning("cancel check failed request_id=%s: %s", self.request_id, exc)
            return False
