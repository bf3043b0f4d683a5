"""``HiredisPackingConnection`` writes exactly the bytes redis-py's own asyncio connection writes."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from core.redis_options import HiredisPackingConnection, async_redis_options

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("HSET", "bitdance:req:1", "status", "IN_QUEUE", "attempts", 0, "created_at", repr(1796026603.178587)),
    ("ZADD", "deadlines", 1796026603.5, "rid"),
    ("SET", "unicode", "un renard roux \u00e9\u00e8 \u72d0\u72f8 \U0001f98a"),
    ("SET", b"raw-key", b"\x00\xff binary"),
    ("SET", "floats", 0.1, 1e20, 1 / 3, -0.0, 12345678901234567890),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "api"),
    ("RPUSH", "list", "x" * 10_000),  # above redis-py's chunking cutoff
    ("EVALSHA", "0" * 40, 2, "k1", "k2", "", "arg"),
]


@pytest.mark.parametrize("decode_responses", [True, False])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_packing_matches_redis_py(command: tuple[Any, ...], decode_responses: bool) -> None:
    ours = HiredisPackingConnection(decode_responses=decode_responses)
    theirs = aioredis.Connection(decode_responses=decode_responses)
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))


def test_arguments_redis_py_refuses_are_still_refused() -> None:
    ours = HiredisPackingConnection()
    with pytest.raises(redis.DataError):
        ours.pack_command("SET", "flag", True)
    with pytest.raises(redis.DataError):
        ours.pack_command("SET", "nothing", None)


def test_the_api_clients_use_it() -> None:
    url = "redis://127.0.0.1:1/0"
    pool = aioredis.BlockingConnectionPool.from_url(url, **async_redis_options(url))
    assert pool.connection_class is HiredisPackingConnection


@pytest.mark.parametrize(
    ("url", "connection_class"),
    [
        ("rediss://127.0.0.1:1/0", aioredis.SSLConnection),
        ("unix:///tmp/redis.sock", aioredis.UnixDomainSocketConnection),
    ],
)
def test_tls_and_unix_socket_urls_keep_their_connections(url: str, connection_class: type) -> None:
    """redis-py 8.2 lets a ``connection_class`` given to ``from_url`` replace the URL's (8.1 did not):
    a TLS URL must still connect over TLS, a socket path through the socket."""
    pool = aioredis.BlockingConnectionPool.from_url(url, **async_redis_options(url))
    assert pool.connection_class is connection_class
