"""``StatusReader``: status polls answered from memory until the change feed says the request changed.

fal clients poll a request's status every 100-500 ms, and most polls find nothing new (a queued
request waits, a running one logs a step now and then). The API process already hears every change
on the change feed (``server.change_feed``), so it keeps the last ``StatusView`` it read per request
and drops it when its request changes, when the queue moves (for queued ones), and wholesale when the
feed loses Redis. A view older than ``max_age_s`` (a safety net: pub/sub messages are not
acknowledged) is refreshed by one background read while polls keep getting it, for at most
``stale_s`` more; a read that overlapped a change is not kept (the feed's ``epoch`` moved meanwhile).

Polls that miss together share one read: a change (or a view's age) makes every poller of a request
miss at the same moment, and 50 pollers of one request then cost one Redis call, not 50 queued on the
connection pool (the tail of issue 9's 200-pollers benchmark). A change drops the read in flight for
its request, so a poll never joins a read that began before the last change it could have seen.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from core.errors import RequestNotFoundError
from core.protocol import RequestStatus
from core.requests.api_store import QueueHead, RequestStore
from core.requests.records import StatusView
from server.change_feed import ChangeFeed

STATUS_CACHE_MAX_AGE_S = 1.0
# An aged view (no change heard, older than the max age) is still answered for this long while one
# read refreshes it in the background: a poll then never waits on Redis unless its request changed.
STATUS_CACHE_STALE_S = 4.0
STATUS_CACHE_MAX_ENTRIES = 50_000


class StatusCache:
    """Views by (request id, with logs), oldest first; the change feed drops them."""

    def __init__(
        self,
        max_age_s: float = STATUS_CACHE_MAX_AGE_S,
        max_entries: int = STATUS_CACHE_MAX_ENTRIES,
        stale_s: float = STATUS_CACHE_STALE_S,
    ) -> None:
        self.max_age_s = max_age_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self._views: OrderedDict[tuple[str, bool], tuple[float, StatusView]] = OrderedDict()

    def get(self, rid: str, with_logs: bool) -> tuple[StatusView, bool] | None:
        """(the view, whether it is fresh), or None: never kept, dropped, overdue, or aged past the stale window."""
        found = self._views.get((rid, with_logs))
        if found is None:
            return None
        stored_at, view = found
        age_s = time.monotonic() - stored_at
        if age_s > self.max_age_s + self.stale_s or view.is_overdue:
            del self._views[(rid, with_logs)]
            return None
        return view, age_s <= self.max_age_s

    def put(self, view: StatusView, with_logs: bool) -> None:
        key = (view.request_id, with_logs)
        self._views.pop(key, None)
        self._views[key] = (time.monotonic(), view)
        while len(self._views) > self.max_entries:
            self._views.popitem(last=False)

    def drop(self, rid: str, logs_only: bool = False) -> None:
        """Forget the request's views (only the one with logs when only its logs changed)."""
        if not logs_only:
            self._views.pop((rid, False), None)
        self._views.pop((rid, True), None)

    def drop_queued(self) -> None:
        for key in [k for k, (_, view) in self._views.items() if view.status is RequestStatus.IN_QUEUE]:
            del self._views[key]

    def clear(self) -> None:
        self._views.clear()


class StatusReader:
    """``RequestStore.status_view`` for polls (whole logs or none), through the cache while the feed is live."""

    def __init__(self, store: RequestStore, feed: ChangeFeed, cache: StatusCache | None = None) -> None:
        self.store = store
        self.feed = feed
        self.cache = cache or StatusCache()
        self._reads: dict[tuple[str, bool], asyncio.Future[StatusView]] = {}
        feed.add_listener(self)

    async def view(self, rid: str, owner: str, with_logs: bool) -> StatusView:
        """The caller's request (``RequestNotFoundError`` for unknown ids and other owners' ids)."""
        live = self.feed.connected.is_set()
        cached = self.cache.get(rid, with_logs) if live else None
        if cached is None:
            view = await asyncio.shield(self._shared_read(rid, with_logs, live))
        else:
            view, fresh = cached
            if not fresh:  # aged, not changed: answer it, and let one read refresh it meanwhile
                self._shared_read(rid, with_logs, live)
        if view.owner != owner:
            raise RequestNotFoundError()
        return view

    def _shared_read(self, rid: str, with_logs: bool, live: bool) -> asyncio.Future[StatusView]:
        """The read of this view in flight, started when there is none (await it through ``shield``:
        one poller's disconnect must not cancel the others' read)."""
        key = (rid, with_logs)
        reading = self._reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(rid, with_logs, live))
            reading.add_done_callback(_retrieve_outcome)
            self._reads[key] = reading
            reading.add_done_callback(lambda done: self._forget(key, done))
        return reading

    async def _read(self, rid: str, with_logs: bool, live: bool) -> StatusView:
        epoch = self.feed.epoch
        view = await self.store.status_view(rid, logs_from=0 if with_logs else None)
        if live and self.feed.epoch == epoch and view.status is not RequestStatus.COMPLETED:
            self.cache.put(view, with_logs)  # COMPLETED ones are polled once more at most
        return view

    def _forget(self, key: tuple[str, bool], done: asyncio.Future[StatusView]) -> None:
        if self._reads.get(key) is done:
            del self._reads[key]

    # --- what the change feed calls -----------------------------------------------------------------

    def request_changed(self, rid: str, logs_only: bool = False) -> None:
        self.cache.drop(rid, logs_only)
        if not logs_only:
            self._reads.pop((rid, False), None)
        self._reads.pop((rid, True), None)

    def queue_moved(self) -> None:
        self.cache.drop_queued()
        self._reads.clear()  # a read in flight may be of a queued request, whose position just changed

    def feed_reset(self) -> None:
        self.cache.clear()
        self._reads.clear()


def _retrieve_outcome(done: asyncio.Future[StatusView]) -> None:
    """Marks a shared read's error as seen (its pollers may all have gone: no "never retrieved" warning)."""
    if not done.cancelled():
        done.exception()


class QueueSnapshot:
    """The queues' heads (``QueueHead``), read once per queue move and shared by all status streams.

    When a request leaves the queue, every queued stream's position changes: one O(1) read of the
    queue heads then serves them all (each stream's position follows from its ticket:
    ``RequestStore.position_from_heads``), instead of one read per stream (thousands at once),
    and without reading the queue lists (issue 19: 100,000 queued made that read block Redis).
    """

    def __init__(self, store: RequestStore, feed: ChangeFeed) -> None:
        self.store = store
        self.feed = feed
        self._moves = -1
        self._reading: asyncio.Future[dict[str, QueueHead]] | None = None

    async def position(self, view: StatusView) -> int | None:
        """The position now of the queued request ``view`` shows, or None when it is not in its list
        (any more) or has no ticket: the caller reads the request itself then."""
        moves = self.feed.queue_moves
        reading = self._reading
        failed = reading is not None and reading.done() and (reading.cancelled() or reading.exception() is not None)
        if reading is None or failed or self._moves != moves:
            self._moves = moves
            reading = self._reading = asyncio.ensure_future(self.store.queue_heads())
        heads = await asyncio.shield(reading)
        return self.store.position_from_heads(view, heads)
