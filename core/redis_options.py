"""Connection options shared by every Redis client of the API and the workers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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


def async_redis_options(url: str) -> dict[str, Any]:
    """The asyncio clients' options for ``url``: hiredis packing on a plain TCP URL (``redis://``). A TLS
    (``rediss://``) or Unix socket URL keeps redis-py's own connection for it: since redis-py 8.2 a
    ``connection_class`` passed to ``from_url`` replaces the one the URL's scheme chose, and TLS would be
    lost (8.1 let the URL's win)."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff

    options = redis_client_options()
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS)
    if urlsplit(url).scheme == "redis":
        options["connection_class"] = HiredisPackingConnection
    return options
