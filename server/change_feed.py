"""``ChangeFeed``: one Redis pub/sub connection per API process that wakes the status streams.

The scripts that change a request publish on its ``Keys.changed`` channel, the worker publishes
there after each log entry, and the scripts that take requests out of a queue (or put them back at
its front) publish on ``Keys.queue_moved``. The feed listens to all of them with one pattern
subscription made at startup; a status stream registers a ``Watch`` for its request (and for queue
moves while it is queued) and sleeps until woken, so an open stream costs nothing while its request
does not change, and a change reaches it one Redis round trip later.

Pub/sub is not durable: after the connection drops, every watch is woken once it is back (each
stream then re-reads its request), so a change is never lost, at most coalesced. ``run`` is one
connection's life and raises when it drops; the API's ``LoopSupervisor`` connects again (with backoff)
and reports the feed down until it is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from core.requests.records import LOGS_CHANGED, Keys
from server.supervised_loops import LoopStatus

logger = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5  # the first retry after the connection failed (doubled per failure in a row)
RECONNECT_DELAY_MAX_S = 2.0  # streams wait for the feed: retry often


class FeedListener(Protocol):
    """Told about every change the feed hears (``server.status_cache`` keeps views until then)."""

    def request_changed(self, rid: str, logs_only: bool = False) -> None: ...

    def queue_moved(self) -> None: ...

    def feed_reset(self) -> None: ...


class Watch:
    """What one stream waits on: its request's changes, and queue moves while ``follow_queue`` is on."""

    def __init__(self, feed: ChangeFeed, request_id: str, with_logs: bool = True) -> None:
        self._feed = feed
        self._event = asyncio.Event()
        self.request_id = request_id
        self.with_logs = with_logs  # False: log entries alone do not wake it (a stream without logs)
        self.follows_queue = False
        self.own_change = False  # a wake came from the request itself (not only from a queue move)

    def follow_queue(self, on: bool) -> None:
        if on != self.follows_queue:
            self.follows_queue = on
            (self._feed._queue_watches.add if on else self._feed._queue_watches.discard)(self)

    def notify(self, own_change: bool) -> None:
        self.own_change = self.own_change or own_change
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken (the wake is consumed), False after ``timeout_s`` without one."""
        try:
            async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for: thousands of streams wait
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def take_own_change(self) -> bool:
        own, self.own_change = self.own_change, False
        return own

    def close(self) -> None:
        self.follow_queue(False)
        watches = self._feed._watches.get(self.request_id)
        if watches is not None:
            watches.discard(self)
            if not watches:
                del self._feed._watches[self.request_id]


class ChangeFeed:
    """The API process's pub/sub listener; ``watch(request_id)`` gives a stream its ``Watch``."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._pattern = keys.changed("*")
        self._prefix, self._suffix = self._pattern.split("*")
        self._queue_channel = keys.queue_moved
        self._watches: dict[str, set[Watch]] = {}
        self._queue_watches: set[Watch] = set()
        self._listeners: list[FeedListener] = []
        self.connected = asyncio.Event()
        self.epoch = 0  # moves with every message, connect and disconnect
        self.queue_moves = 0  # moves with every queue move, connect and disconnect

    def add_listener(self, listener: FeedListener) -> None:
        self._listeners.append(listener)

    def watch(self, request_id: str, with_logs: bool = True) -> Watch:
        watch = Watch(self, request_id, with_logs)
        self._watches.setdefault(request_id, set()).add(watch)
        return watch

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watches.values())

    async def run(self, status: LoopStatus | None = None) -> None:
        """Connect and listen until cancelled, or until the connection fails (raised; run it again to
        reconnect: everyone is woken once connected). ``status`` hears when the feed is connected."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(self._pattern)
            await pubsub.subscribe(self._queue_channel)
            await pubsub.get_message(timeout=1.0)  # the replies: subscriptions are in place
            await pubsub.get_message(timeout=1.0)
            self._reset()
            self.connected.set()
            if status is not None:
                status.ran()
            self._wake_all()  # whatever changed before (re)connecting
            await self._listen(pubsub)
        finally:
            self.connected.clear()
            self._reset()
            try:
                await pubsub.aclose()
            except (redis.RedisError, OSError):
                pass

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            self.epoch += 1
            if channel == self._queue_channel:
                self.queue_moves += 1
                for listener in self._listeners:
                    listener.queue_moved()
                for watch in tuple(self._queue_watches):
                    watch.notify(own_change=False)
            elif channel.startswith(self._prefix) and channel.endswith(self._suffix):
                rid = channel[len(self._prefix) : len(channel) - len(self._suffix)]
                # a worker logs every decoding step: streams and views without logs need not read then
                logs_only = message["data"] in (LOGS_CHANGED, LOGS_CHANGED.encode())
                for listener in self._listeners:
                    listener.request_changed(rid, logs_only)
                for watch in tuple(self._watches.get(rid, ())):
                    if watch.with_logs or not logs_only:
                        watch.notify(own_change=True)

    def _reset(self) -> None:
        self.epoch += 1
        self.queue_moves += 1
        for listener in self._listeners:
            listener.feed_reset()

    def wake_all(self) -> None:
        """Every stream re-checks now (the API begins to drain, the connection came back)."""
        self._wake_all()

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.notify(own_change=True)
