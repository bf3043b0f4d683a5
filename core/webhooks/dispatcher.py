"""``WebhookDispatcher``: the thread of each API and worker process that drains the webhook outbox,
many attempts at once.

It runs an event loop of its own: up to ``webhook_concurrency`` attempts are in flight together,
at most ``webhook_concurrency_per_host`` of them to one receiver (``core.webhooks.receivers``), and
each is bounded by ``webhook_timeout_s`` as a whole (``core.webhooks.delivery``). So a receiver that
never answers, or drips its answer, holds a few slots for one deadline, and every other webhook is
sent as soon as it is due. Only as many webhooks are leased as there are free slots; one whose
receiver is busy waits in that receiver's line (briefly, bounded) or goes back to the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import anyio
import redis

from core.webhooks.outbox import WebhookOutbox
from core.webhooks.receivers import ReceiverSlots

logger = logging.getLogger(__name__)

STOP_GRACE_S = 2.0  # attempts still in flight when stopping get this long, then are given back


class WebhookDispatcher(threading.Thread):
    """Background thread draining the outbox: leases due webhooks into free slots, idles
    ``webhook_poll_interval_s`` (or until a slot frees) when none is due."""

    def __init__(self, outbox: WebhookOutbox, name: str = "webhooks") -> None:
        super().__init__(name=name, daemon=True)
        self.outbox = outbox
        settings = outbox.settings
        self.interval_s = settings.webhook_poll_interval_s
        self.max_in_flight = settings.webhook_concurrency
        self.slots = ReceiverSlots(settings.webhook_concurrency_per_host)
        self.stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Webhooks leased by this process now, attempts and those waiting for their receiver (a snapshot)."""
        return len(self._in_flight)

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # the loop itself failed: say so; the thread ends (is_alive() tells)
            logger.exception("webhook dispatcher stopped on an error")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while not self.stopped.is_set():
                self._wake.clear()  # before leasing: a slot freed from now on wakes the idle wait below
                leased = await self._lease()
                for rid in leased:
                    self._start(rid)
                if not leased:
                    await self._idle()
        finally:
            await self._finish_in_flight()
            self.outbox.sender.close()

    async def _lease(self) -> list[str]:
        # Those waiting in line for a busy receiver hold no slot: they never keep others' webhooks from
        # being leased (a receiver's line is bounded: core.webhooks.receivers).
        free = self.max_in_flight - (len(self._in_flight) - self.slots.waiting)
        if free <= 0:
            return []
        try:
            return await anyio.to_thread.run_sync(self.outbox.lease_due, free)
        except redis.RedisError as exc:
            logger.warning("webhook outbox unavailable: %s", exc)
        except Exception:  # the loop must survive anything one lease throws
            logger.exception("webhook dispatcher error")
        return []

    def _start(self, rid: str) -> None:
        task = asyncio.create_task(self._attempt(rid), name=f"webhook-{rid}")
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._wake is not None:
            self._wake.set()  # a slot is free: look for due webhooks now

    async def _attempt(self, rid: str) -> None:
        try:
            await self.outbox.attempt(rid, self.slots)
        except redis.RedisError as exc:  # its lease runs out and it is tried again
            logger.warning("webhook request_id=%s: outbox unavailable: %s", rid, exc)
        except Exception:  # one attempt must never end the dispatcher
            logger.exception("webhook attempt failed request_id=%s", rid)

    async def _idle(self) -> None:
        assert self._wake is not None
        if self.stopped.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self.interval_s)
        except TimeoutError:
            pass

    async def _finish_in_flight(self) -> None:
        if not self._in_flight:
            return
        _, unfinished = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_S)
        for task in unfinished:
            task.cancel()  # given back to the outbox, due at once for any dispatcher
        await asyncio.gather(*unfinished, return_exceptions=True)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self.is_alive():
            self.join(timeout_s)
