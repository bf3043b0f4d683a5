"""``UnpolledCheckoutPool`` (the workers' pools) on a real Redis: no socket poll when a connection is
taken for a command (one system call per command, which in a 320-slot worker hands the GIL to another
thread each time: issue 21); a connection the server closed is still replaced, and pub/sub still polls."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
import redis._parsers.hiredis as hiredis_parser

from core.redis_options import UnpolledCheckoutPool, redis_client_options
from stack.launcher import RedisProcess


class PollCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = hiredis_parser._socket_can_read

        def counted(sock: object, timeout: float) -> bool:
            self.calls += 1
            return real(sock, timeout)

        monkeypatch.setattr(hiredis_parser, "_socket_can_read", counted)


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> PollCounter:
    return PollCounter(monkeypatch)


def client_on(pool_class: type[redis.BlockingConnectionPool], url: str) -> redis.Redis:
    pool = pool_class.from_url(url, max_connections=4, timeout=5, decode_responses=True, **redis_client_options())
    return redis.Redis(connection_pool=pool, **redis_client_options())


@pytest.fixture
def client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    c = client_on(UnpolledCheckoutPool, redis_server.url)
    yield c
    c.close()


def test_commands_take_connections_without_polling(
    redis_server: RedisProcess, client: redis.Redis, polls: PollCounter
) -> None:
    for index in range(100):
        client.set(f"unpolled:{index}", index)
    assert polls.calls == 0
    plain = client_on(redis.BlockingConnectionPool, redis_server.url)
    try:
        for index in range(100):
            plain.get(f"unpolled:{index}")
        assert polls.calls >= 100  # redis-py's own pool: one poll per command
    finally:
        plain.close()


def test_a_connection_the_server_closed_is_replaced(client: redis.Redis, redis_client: redis.Redis) -> None:
    client.set("unpolled:closed", "1")  # the pool now holds an idle connection
    name = f"unpolled-{threading.get_ident()}"
    client.client_setname(name)
    killed = [c for c in redis_client.client_list() if c.get("name") == name]
    assert killed
    redis_client.client_kill_filter(_id=killed[0]["id"])
    assert client.get("unpolled:closed") == "1"  # failed on the closed socket, retried on a new one


def test_pubsub_reads_still_poll(client: redis.Redis, redis_client: redis.Redis, polls: PollCounter) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("unpolled:channel")
        redis_client.publish("unpolled:channel", "hello")
        message = None
        for _ in range(50):
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                break
        assert message is not None and message["data"] == "hello"
        assert polls.calls > 0  # pub/sub's waits for a message are its own polls
    finally:
        pubsub.close()
