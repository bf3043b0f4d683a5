"""``BoundedHttpToolsProtocol``: uvicorn's httptools protocol with the limits of ``server.http_limits``.

A subclass, not another server: measured (issue 19's design note), httptools met every bound for about
2 µs a request, where h11 halved throughput and still lacked a header timeout and a connection bound.
It relies on uvicorn's ``HttpToolsProtocol`` internals, so ``pyproject.toml`` pins uvicorn and httptools
exactly and ``tests/unit/server/test_bounded_protocol.py`` fails when a bump changes what is overridden:
``data_received`` (uvicorn's body, plus the bounds), the parser callbacks ``on_message_begin``,
``on_headers_complete``, ``on_body``, ``on_message_complete``, and ``on_response_complete``,
``connection_made``, ``connection_lost``; attributes ``pipeline``, ``flow``, ``cycle``, ``url``,
``headers``, ``parser``, ``connections``. And on httptools 0.9: an exception raised in a parser
callback stops llhttp where it is and ``feed_data`` raises ``HttpParserCallbackError`` (an
``HttpParserError``); the parser stays in its error state, so such a connection is never fed again.

1. **Head size**: a head still incomplete after a read is counted in whole reads (uvloop reads at most
   256 KB at a time), so a streamed head is refused within one read of ``max_header_bytes``, before
   httptools' ``+=`` of a growing value costs anything. A read that began with another request's tail
   counts nothing (no false refusal after a large body); a head that arrived whole in one read larger
   than the limit is measured from what was parsed. Over the limit: 431, or, when an answer is being
   written on that connection, no 431 in its middle: the connection closes after its answers. A chunked
   body's chunk headers and trailers (headers after the body, which httptools grows the same way) are
   counted alike; over the limit the connection is closed (the request's body is cut: the app sees a
   disconnect).
2. **Head time**: a connection with no request in flight (new, or answered and idle) must complete a
   head within ``header_timeout_s`` of becoming so, however it trickles it (slowloris): then 408, or a
   quiet close if it sent nothing. uvicorn's 5 s keep-alive still closes idle connections first.
3. **Connections**: at ``max_connections`` a new connection pushes out the oldest one waiting for a
   head (slowloris and idle keep-alive first; requests and status streams in flight are never cut);
   if none waits, 503 in fal's shape; beyond ``hard_connections``, a reset.
4. **Pipelining**: at most ``max_pipelined`` parsed requests wait behind the one in flight and reading
   stays paused while any wait (uvicorn resumes it after every answer); one more stops the parser and
   the connection closes after answering what was queued (RFC 9112 9.3.2: the client resends the rest).

A refusal writes its answer, half-closes, and reads and drops input for at most ``linger_s`` /
``linger_bytes`` before closing, so that the client reads the answer rather than a reset (as nginx's
lingering close).
"""

from __future__ import annotations

import asyncio
import functools
from asyncio import TimerHandle
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.errors import FalError, HeaderFieldsTooLargeError, RequestHeaderTimeoutError, ServiceUnavailableError
from server.http_limits import TRACKER_STATE_KEY, ConnectionTracker, HttpLimits, Refusal, refusal_response

OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
)


class StopParsing(Exception):
    """Raised in a parser callback to stop llhttp where it is (why: ``BoundedHttpToolsProtocol.stopped``)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection, as uvicorn's, within ``limits`` (see the module docstring)."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.tracker = ConnectionTracker.of(self.server_state, limits, self.loop)
        self.app_state.setdefault(TRACKER_STATE_KEY, self.tracker)  # every request's scope["state"] has it
        self.head_pending = False  # a request began and its head is not complete
        self.chunk_pending = False  # a chunk header (or, after the last chunk, the trailers) is not complete
        self.head_bytes = 0  # bytes of the pending head (or chunk header) counted in earlier reads
        self.read_bytes = 0  # length of the read being parsed
        self.began_in_read = False  # on_message_begin ran during this read ...
        self.other_bytes_in_read = False  # ... after another request's bytes in the same read
        self.stopped: Refusal | None = None  # why a callback stopped the parser
        self.refused = False  # an answer was written: input is dropped until the close
        self.closing_after_answers = False  # nothing more is read; closes after the queued answers
        self.lingered = 0
        self.linger_close: TimerHandle | None = None

    # --- the connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self.tracker.evict_oldest():
            if len(self.connections) > self.limits.hard_connections:
                self.tracker.count(Refusal.RESET)
                self.transport.abort()
                return
            self.tracker.count(Refusal.OVER_CONNECTIONS)
            self.refuse(ServiceUnavailableError("Too many connections, retry later", headers={"Retry-After": "1"}))
            return
        self.tracker.wait_for_head(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tracker.forget(self)
        if self.linger_close is not None:
            self.linger_close.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.lingered += len(data)
            if self.lingered > self.limits.linger_bytes:
                self.transport.close()
            return
        if self.closing_after_answers:
            self.flow.pause_reading()  # an answer resumed reading: keep it stopped
            return
        self._unset_keepalive_if_required()
        self.read_bytes = len(data)
        self.began_in_read = self.other_bytes_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.stopped is Refusal.PIPELINE_OVERFLOW:
                self.close_after_answers()
            elif self.stopped is Refusal.HEADER_TOO_LARGE:
                self.head_too_large()
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_pending or self.chunk_pending:
            if not (self.began_in_read and self.other_bytes_in_read):
                self.head_bytes += len(data)  # the whole read was this head's (or chunk header's)
            if self.head_bytes <= self.limits.max_header_bytes:
                return
            if self.head_pending:
                self.head_too_large()
            else:
                self.tracker.count(Refusal.HEADER_TOO_LARGE)
                self.transport.close()  # endless trailers: the body is cut, the app sees a disconnect

    # --- parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_pending = True
        self.head_bytes = 0
        self.began_in_read = True

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self.other_bytes_in_read = True
        if self.head_bytes + self.read_bytes > self.limits.max_header_bytes and self.head_size() > (
            self.limits.max_header_bytes
        ):
            self.stopped = Refusal.HEADER_TOO_LARGE
            raise StopParsing
        if len(self.pipeline) >= self.limits.max_pipelined:
            self.stopped = Refusal.PIPELINE_OVERFLOW
            raise StopParsing
        self.tracker.forget(self)  # a request is in flight: no head is due
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.chunk_pending = False
        self.other_bytes_in_read = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.other_bytes_in_read = True
        super().on_message_complete()

    def on_chunk_header(self) -> None:
        """A chunk's size line was parsed: its data follows, or, for the last chunk, the trailers."""
        self.chunk_pending = True
        self.head_bytes = 0
        self.began_in_read = True

    def on_chunk_complete(self) -> None:
        self.chunk_pending = False
        self.other_bytes_in_read = True

    def on_response_complete(self) -> None:
        started_next = bool(self.pipeline)  # uvicorn starts the next queued request
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.pipeline or self.closing_after_answers:
            self.flow.pause_reading()  # uvicorn resumed reading: not while requests wait
        elif not started_next and self.cycle.keep_alive:
            self.tracker.wait_for_head(self)  # idle: the next head is due within the header timeout

    # --- the bounds ----------------------------------------------------------------------------------

    def head_size(self) -> int:
        """Bytes of the head just parsed: the target and every header line (only computed for heads that
        may be over the limit: a read larger than it)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def head_too_large(self) -> None:
        self.tracker.count(Refusal.HEADER_TOO_LARGE)
        if self.cycle is not None and not self.cycle.response_complete:
            self.close_after_answers()  # an answer is being written: no 431 in its middle
            return
        limit = self.limits.max_header_bytes
        self.refuse(HeaderFieldsTooLargeError(f"Request header fields larger than {limit} bytes"))

    def head_timed_out(self) -> None:
        """Called by the tracker's sweep: no complete head within the header timeout."""
        if self.refused or self.transport.is_closing():
            return
        self.tracker.count(Refusal.HEADER_TIMEOUT)
        if self.head_pending:
            self.refuse(RequestHeaderTimeoutError())
        else:
            self.transport.close()  # sent nothing since it connected or was answered: a quiet close

    def evict(self) -> None:
        """Pushed out by a new connection at the bound (the tracker took it off the books)."""
        if self.head_pending and not self.refused:
            self.transport.write(refusal_response(RequestHeaderTimeoutError()))
        self.refused = True
        self.transport.close()

    def close_after_answers(self) -> None:
        """Answer what was parsed, read nothing more, close after the last answer."""
        self.closing_after_answers = True
        self.tracker.forget(self)
        self.flow.pause_reading()
        self.cycle.keep_alive = False  # the newest request: its answer closes the connection

    def refuse(self, error: FalError) -> None:
        self.refused = True
        self.tracker.forget(self)
        self.transport.write(refusal_response(error))
        if self.transport.can_write_eof():  # not over TLS
            self.transport.write_eof()
        self.flow.resume_reading()  # read (and drop) what the client still sends until the close
        self.linger_close = self.loop.call_later(self.limits.linger_s, self.transport.close)


def bounded_http_protocol(limits: HttpLimits) -> functools.partial[BoundedHttpToolsProtocol]:
    """What uvicorn's ``Config(http=...)`` takes: the protocol class with ``limits`` bound (a partial of a
    module-level class with a frozen dataclass pickles, so ``--workers N`` can spawn with it)."""
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)
