"""``StatusStream``: the server-sent events of ``/status/stream``, each one a ``QueueStatus`` body
(``core.protocol.queue_status_body``, as a poll answers it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from core.protocol import RequestStatus, queue_status_body
from core.requests.api_store import RequestStore
from core.requests.records import StatusView
from core.settings import Settings
from server.change_feed import ChangeFeed
from server.json_response import dumps
from server.shutdown import Drain
from server.status_cache import QueueSnapshot
from server.urls import Urls

LOW_PRIORITY_RECHECK_S = 1.0
DRAIN_CHECK_S = 0.25
QUEUE_MOVE_COALESCE_S = 0.05  # a stream woken by a queue move waits this long, so a burst of moves costs one read


class StatusStream:
    """The status event streams of this API process: woken by the change feed, never by a timer."""

    def __init__(
        self, store: RequestStore, feed: ChangeFeed, snapshot: QueueSnapshot, drain: Drain, settings: Settings
    ) -> None:
        self.store = store
        self.feed = feed
        self.snapshot = snapshot
        self.drain = drain
        self.settings = settings

    async def open(self, request_id: str, owner: str, urls: Urls, *, include_logs: bool) -> AsyncIterator[bytes]:
        """The caller's request's events (``RequestNotFoundError`` now, before any event, for unknown
        ids and other owners' ids); after ``RequestService.check_request``."""
        await self.store.status_view(request_id, owner=owner, logs_from=None)
        return self.events(request_id, urls, include_logs)

    async def events(self, request_id: str, urls: Urls, include_logs: bool) -> AsyncIterator[bytes]:
        """One ``data:`` event per change, ``: ping`` keep-alives, and the end right after COMPLETED
        (or, when the API shuts down, at the end of its grace period: a clean end of the stream).

        The stream reads its request when the change feed says it changed (or, while it is queued, that
        the queue moved), never on a timer: an idle stream costs a keep-alive every
        ``stream_keepalive_s``. Low-priority positions also grow with normal submits, which publish
        nothing: a queued low-priority stream re-reads every ``LOW_PRIORITY_RECHECK_S`` too. A queue
        move alone only changes positions: those come from one ``QueueSnapshot`` shared by all streams.
        """
        feed, settings, drain = self.feed, self.settings, self.drain
        watch = feed.watch(request_id, with_logs=include_logs)  # before the first read: no change can fall in between
        try:
            if not feed.connected.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.connected.wait(), settings.stream_keepalive_s)
            sent_logs = 0
            last_payload = b""
            last_sent = time.monotonic()
            view: StatusView | None = None
            while True:
                position = await self.snapshot.position(view) if view is not None else None
                if view is not None and position is not None:  # only the queue moved, and it is still queued
                    view = dataclasses.replace(view, queue_position=position, logs=None)
                else:
                    view = await self.store.status_view(request_id, logs_from=sent_logs if include_logs else None)
                new_logs = view.logs or []
                sent_logs += len(new_logs)
                payload = dumps(queue_status_body(view, urls.request_urls(view.endpoint, view.request_id), new_logs))
                if payload != last_payload:
                    yield b"data: " + payload + b"\n\n"
                    last_payload, last_sent = payload, time.monotonic()
                if view.status is RequestStatus.COMPLETED or drain.is_over():
                    return
                queued = view.status is RequestStatus.IN_QUEUE
                watch.follow_queue(queued)
                recheck_s = LOW_PRIORITY_RECHECK_S if queued and view.queue == settings.queue_low else None
                while True:
                    idle_s = settings.stream_keepalive_s - (time.monotonic() - last_sent)
                    timeout_s = min(idle_s, recheck_s or idle_s)
                    if drain.is_draining:  # woken when the drain begins (app lifespan): end with the grace period
                        timeout_s = min(timeout_s, DRAIN_CHECK_S)
                    if await watch.wait(max(0.0, timeout_s)):
                        break
                    if drain.is_over() or (recheck_s is not None and idle_s > recheck_s):
                        break
                    if drain.is_draining and idle_s > DRAIN_CHECK_S:
                        continue
                    yield b": ping\n\n"
                    last_sent = time.monotonic()
                if watch.take_own_change() or not queued or recheck_s is not None:
                    view = None  # read the request itself
                else:  # only the queue moved: let a burst of moves coalesce, then read positions
                    await asyncio.sleep(QUEUE_MOVE_COALESCE_S)
                    if watch.take_own_change():
                        view = None
        finally:
            watch.close()
