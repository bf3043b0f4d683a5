"""The HTTP server's own limits: request-head size and time, connections per process, pipelining.

uvicorn bounds none of these (issue 19): a 100 MB header was read whole on the event loop (httptools
grows a split header value by ``bytes +=``, once per read), connections that never finish their head
are never closed, and pipelined requests are parsed without end. ``server.bounded_protocol`` enforces
the limits held here; this module holds what they are (``HttpLimits``), what a refused client reads
(``refusal_response``: fal's error shape, rendered before any request exists), and the per-process
``ConnectionTracker``: the connections waiting for a request head, oldest first, the refusal counts
that ``/metrics`` exports, and one summary log line a second at most instead of one per refusal.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

from core.errors import FalError
from core.settings import Settings

if TYPE_CHECKING:
    from server.bounded_protocol import BoundedHttpToolsProtocol

logger = logging.getLogger(__name__)

MAX_PIPELINED = 16  # parsed requests that may wait behind the one in flight (no real client pipelines)
LINGER_S = 2.0  # after a refusal: input read and dropped this long at most, so the client reads the answer
LINGER_BYTES = 1 << 20
SWEEP_INTERVAL_S = 1.0
FILES_RESERVED = 256  # descriptors kept for Redis (64), files being served, webhooks, logs
MIN_CONNECTIONS = 64
TRACKER_STATE_KEY = "bitdance.http_connections"  # where requests find their process's tracker (scope["state"])
STATUS_PHRASES = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class Refusal(StrEnum):
    """Why the server closed a connection on its own (the ``reason`` label of the refusal counter)."""

    HEADER_TOO_LARGE = "header_too_large"  # 431, or closed after the answers in flight
    HEADER_TIMEOUT = "header_timeout"  # 408, or a quiet close when nothing was sent
    EVICTED = "evicted"  # the oldest connection waiting for a head, pushed out by a new one at the bound
    OVER_CONNECTIONS = "over_connections"  # 503: every connection has a request in flight
    RESET = "reset"  # far over the bound: reset without an answer, the descriptor back at once
    PIPELINE_OVERFLOW = "pipeline_overflow"  # closed after answering what was queued


@dataclass(frozen=True)
class HttpLimits:
    """The bounds one API process enforces (picklable: ``--workers N`` hands them to spawned processes)."""

    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    max_connections: int = 4096
    max_pipelined: int = MAX_PIPELINED
    linger_s: float = LINGER_S
    linger_bytes: int = LINGER_BYTES

    @property
    def hard_connections(self) -> int:
        """Beyond this many, a new connection is reset at once (no 503): the 503s themselves linger."""
        return self.max_connections + max(64, self.max_connections // 8)

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int | None = None) -> HttpLimits:
        """The settings' limits, the connection bound lowered to what ``open_files`` descriptors allow
        (default: the process's soft ``RLIMIT_NOFILE``; ``raise_open_files_limit`` lifts it first)."""
        if open_files is None:
            open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        available = open_files - FILES_RESERVED  # for connections, the hard bound's slack included
        allowed = max(MIN_CONNECTIONS, available - max(64, available // 9))  # so that hard_connections fits
        connections = settings.max_connections
        if open_files != resource.RLIM_INFINITY and connections > allowed:
            logger.warning(
                "BITDANCE_MAX_CONNECTIONS=%d does not fit the open-files limit (%d): using %d",
                connections,
                open_files,
                allowed,
            )
            connections = allowed
        return cls(settings.max_header_bytes, settings.header_timeout_s, connections)


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one (containers often start at 1024); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def refusal_response(error: FalError) -> bytes:
    """A whole HTTP/1.1 answer in fal's error shape that closes the connection.

    Rendered as bytes because no request exists yet (no ASGI app to answer it), and so without an
    ``x-fal-request-id``: there is no request to name (fal's JS client would read one as a request id)."""
    stored = error.to_stored()
    body = orjson.dumps(stored.body)
    phrase = STATUS_PHRASES.get(stored.status_code, b"")
    lines = [b"HTTP/1.1 %d %s\r\n" % (stored.status_code, phrase), b"content-type: application/json\r\n"]
    lines.append(b"content-length: %d\r\n" % len(body))
    lines += [f"{name.lower()}: {value}\r\n".encode("latin-1") for name, value in stored.headers.items()]
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + body


class ConnectionTracker:
    """One API process's connections with no request in flight, in the order they became so (a dict
    keeps insertion order: the first is the oldest), their once-a-second sweep for the overdue (its
    cost is the overdue ones only), and the refusal counts with their summary log line."""

    def __init__(self, limits: HttpLimits, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.connections = connections  # uvicorn's set of this process's open connections
        self.loop = loop
        self.waiting: dict[BoundedHttpToolsProtocol, float] = {}
        self.refusals: Counter[Refusal] = Counter()
        self._logged: Counter[Refusal] = Counter()
        self._logged_at = loop.time()
        loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    @classmethod
    def of(cls, server_state: Any, limits: HttpLimits, loop: asyncio.AbstractEventLoop) -> ConnectionTracker:
        """The tracker of the uvicorn server whose ``ServerState`` this is (one per process), made on first use."""
        tracker: ConnectionTracker | None = getattr(server_state, "bitdance_connection_tracker", None)
        if tracker is None:
            tracker = cls(limits, server_state.connections, loop)
            server_state.bitdance_connection_tracker = tracker
        return tracker

    def wait_for_head(self, protocol: BoundedHttpToolsProtocol) -> None:
        """``protocol`` has no request in flight from now: its next head is due within the header timeout."""
        self.waiting.pop(protocol, None)  # re-inserted last: the newest
        self.waiting[protocol] = self.loop.time()

    def forget(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.waiting.pop(protocol, None)

    def evict_oldest(self) -> bool:
        """Close the connection that has waited longest for a head, freeing its slot; False if none waits."""
        if not self.waiting:
            return False
        oldest = next(iter(self.waiting))
        del self.waiting[oldest]
        self.connections.discard(oldest)  # its slot is the newcomer's now; connection_lost follows
        self.count(Refusal.EVICTED)
        oldest.evict()
        return True

    def count(self, refusal: Refusal) -> None:
        self.refusals[refusal] += 1

    def counts(self) -> Iterator[tuple[str, int]]:
        """(reason, count) for every reason, zeros included (``/metrics``)."""
        for refusal in Refusal:
            yield refusal.value, self.refusals[refusal]

    def _sweep(self) -> None:
        try:
            deadline = self.loop.time() - self.limits.header_timeout_s
            while self.waiting:  # oldest first: stop at the first one still in time
                protocol, since = next(iter(self.waiting.items()))
                if since > deadline:
                    break
                del self.waiting[protocol]
                protocol.head_timed_out()
            self._log_refusals()
        except Exception:  # the sweep must outlive any one connection's failure
            logger.exception("connection sweep failed")
        finally:
            self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _log_refusals(self) -> None:
        """One line for the refusals since the last one (at most a line per sweep), none when there were none."""
        if self.refusals == self._logged:
            return
        now = self.loop.time()
        since = self.refusals - self._logged
        kinds = ", ".join(f"{refusal.value}={count}" for refusal, count in sorted(since.items()))
        logger.warning(
            "refused or closed %d connections in the last %.0fs (%s); %d open",
            sum(since.values()),
            now - self._logged_at,
            kinds,
            len(self.connections),
        )
        self._logged = Counter(self.refusals)
        self._logged_at = now
