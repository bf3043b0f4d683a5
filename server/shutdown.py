"""``Drain``: the API's graceful shutdown, as the routes see it.

On SIGTERM (or the first Ctrl-C) uvicorn stops accepting connections and closes idle ones; ``Drain``
is started at that moment (``server.serving.DrainingServer``). In-flight sync runs and status streams
then have ``Settings.shutdown_grace_s`` to finish normally. After that a sync run answers fal's error
shape with its ``x-fal-request-id`` (its request stays queued or running: the client fetches the
result from the queue API, as a retry would duplicate the work) and a status stream ends cleanly.
uvicorn's own graceful timeout is set a little longer, so it never cuts an answer short.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

# Added to the grace period for uvicorn's graceful timeout: time for the last answers to be sent.
ANSWER_MARGIN_S = 5.0


class Drain:
    """Started once when shutdown begins; ``is_over`` once the grace period has passed."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.started_at: float | None = None

    def begin(self) -> None:
        """Safe to call from a signal handler (it only records the time) and more than once."""
        if self.started_at is None:
            self.started_at = time.monotonic()

    @property
    def is_draining(self) -> bool:
        return self.started_at is not None

    def is_over(self) -> bool:
        return self.started_at is not None and time.monotonic() >= self.started_at + self.grace_s
