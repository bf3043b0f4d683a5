"""``LoopSupervisor``: the API process's background loops, each restarted with backoff when it fails,
and the names of those that cannot run for ``/health/ready`` and ``/health``.

Before (issue 19), the loops ran unguarded in the lifespan's task group: during descriptor exhaustion
the file expiry hit ``EMFILE`` in ``os.scandir``, the task group cancelled its siblings with it, the
Redis change feed among them, and from then on status streams got no events, files stopped expiring,
and ``/health`` still said 200. Now a loop that raises is logged (its traceback once per run of
failures, then one line per retry) and started again after a backoff that doubles up to its maximum;
it counts as down from its first failure until it reports progress again (``LoopStatus.ran``). Threads
(the webhook dispatcher) are watched too: one that is no longer alive is down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass
class LoopStatus:
    """How one loop is doing: failures in a row since it last made progress, and the last error."""

    name: str
    failures: int = 0
    last_error: str = ""

    @property
    def is_down(self) -> bool:
        return self.failures > 0

    def ran(self) -> None:
        """Called by the loop each time it made progress (a scan done, the feed connected)."""
        if self.failures:
            logger.warning("background loop %s is running again after %d failures", self.name, self.failures)
        self.failures = 0
        self.last_error = ""

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"


LoopBody = Callable[[LoopStatus], Awaitable[None]]


class LoopSupervisor:
    """Runs loops (``supervise``, one task each in the lifespan's task group) and watches threads."""

    def __init__(self) -> None:
        self.loops: dict[str, LoopStatus] = {}
        self.threads: dict[str, threading.Thread] = {}

    async def supervise(
        self, name: str, body: LoopBody, backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S
    ) -> None:
        """Run ``body(status)`` until it returns (its work is done) or the task is cancelled; each time it
        raises, log, wait (``backoff_s``, doubled per failure in a row up to ``backoff_max_s``) and run it again."""
        status = self.loops.setdefault(name, LoopStatus(name))
        while True:
            try:
                await body(status)
                return
            except Exception as exc:  # the loop's boundary: whatever it raises, it is started again
                status.failed(exc)
                delay_s = min(backoff_s * 2 ** (status.failures - 1), backoff_max_s)
                if status.failures == 1:
                    logger.exception("background loop %s failed; restarting it in %.1fs", name, delay_s)
                else:
                    logger.warning(
                        "background loop %s failed again (%d in a row: %s); restarting it in %.1fs",
                        name,
                        status.failures,
                        status.last_error,
                        delay_s,
                    )
            await asyncio.sleep(delay_s)

    def watch_thread(self, name: str, thread: threading.Thread) -> None:
        self.threads[name] = thread

    def down(self) -> dict[str, str]:
        """{name: why} of every loop failing and every watched thread that died."""
        found = {status.name: status.last_error for status in self.loops.values() if status.is_down}
        for name, thread in self.threads.items():
            if not thread.is_alive():
                found[name] = "thread exited"
        return found


async def every(interval_s: float, step: Callable[[], Awaitable[None]], status: LoopStatus) -> None:
    """A periodic loop's body: ``step`` now, then every ``interval_s``; each completed step is progress."""
    while True:
        await step()
        status.ran()
        await asyncio.sleep(interval_s)
