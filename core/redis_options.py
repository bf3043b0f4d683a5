"""Connection options shared by every Redis client of the API and the workers."""

from __future__ import annotations

import threading
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

# Reconnect through a Redis restart instead of failing the first command after it.
REDIS_RETRY_ATTEMPTS = 6


def redis_client_options() -> dict[str, Any]:
    """Connection options shared by every Redis client of the API and the workers."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 10,
    }


class HiredisPackingConnection(aioredis.Connection):
    """redis-py's asyncio connection, serializing commands with hiredis (in C) as its sync client
    does: its own pure-Python ``pack_command`` was the largest single cost of a submit (issue 9).
    Arguments are encoded exactly as redis-py does: strings and bytes go to hiredis as they are
    (it writes a ``str`` as UTF-8, as redis-py's encoder does), everything else through the encoder."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # 'CONFIG GET' and the like: the words are separate arguments
            args = tuple(first.encode().split()) + args[1:]
        elif b" " in first:
            args = tuple(first.split()) + args[1:]
        encode = self.encoder.encode
        return [hiredis.pack_command(tuple(a if type(a) in (str, bytes) else encode(a) for a in args))]


def async_redis_options() -> dict[str, Any]:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff

    options = redis_client_options()
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS)
    options["connection_class"] = HiredisPackingConnection
    return options


_taking = threading.local()  # set while this thread takes a connection from an ``UnpolledCheckoutPool``


class UnpolledCheckoutPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, whose connections are not polled when taken for a command.

    redis-py polls a connection's socket each time it leaves the pool, to catch one left with a reply
    unread or closed by the server: a system call per command, and in a process of many threads (a
    320-slot simulated worker) each system call hands the GIL to another thread. Without that poll a
    burst's worker spent 14.3 CPU ms per request instead of 23.1, with half the context switches
    (issue 21). What the poll guarded against is covered otherwise: redis-py disconnects a connection
    on any error or interruption while it sends or reads, so none returns to the pool with a reply
    pending (and redis-py 8, its maintenance notifications on "auto" by default, ignores the poll's
    answer for such data anyway: its own pool hands such a connection out as it is); the one effect
    left was finding a socket the server closed before sending on it: the command then fails with a
    ``ConnectionError`` before it ran, and the clients' ``Retry`` (``redis_client_options``) sends it
    again on a new connection; a connection idle for ``health_check_interval`` is pinged before use.
    Bytes hiredis already buffered are still looked at (no system call); pub/sub's reads poll as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _unpolled_at_checkout(self.connection_class)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        _taking.active = True
        try:
            return super().get_connection(*args, **kwargs)
        finally:
            _taking.active = False


_UNPOLLED_CLASSES: dict[type[Any], type[Any]] = {}


def _unpolled_at_checkout(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (TCP, TLS or Unix socket, as the URL chose) whose ``can_read(0)``, while its
    thread takes it from the pool, looks only at what hiredis has buffered."""
    if connection_class not in _UNPOLLED_CLASSES:

        def can_read(self: Any, timeout: float = 0) -> bool:
            reader = getattr(self._parser, "_reader", None)  # hiredis's (the pure-Python parser: polled)
            if timeout == 0 and getattr(_taking, "active", False) and self._sock is not None and reader is not None:
                return bool(reader.has_data())
            return bool(connection_class.can_read(self, timeout))

        _UNPOLLED_CLASSES[connection_class] = type(
            connection_class.__name__, (connection_class,), {"can_read": can_read}
        )
    return _UNPOLLED_CLASSES[connection_class]
