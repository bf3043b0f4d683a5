"""A worker's Redis clients serve every slot at once: a 300-slot simulated worker lost a third of its slots
to redis-py's default pool limit (100 connections: ``MaxConnectionsError`` on a slot's first command)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from core.settings import Settings
from worker.__main__ import worker_redis_clients

SLOTS = 150  # more than redis-py's default pool of 100


def _all_at_once(client: redis.Redis, key: str, threads: int, wait_s: float = 0.5) -> list[BaseException]:
    """``threads`` commands holding a connection each at the same time (a BLPOP on an empty list)."""
    errors: list[BaseException] = []
    ready = threading.Barrier(threads)

    def one() -> None:
        ready.wait()
        try:
            client.blpop([key], timeout=wait_s)
        except redis.RedisError as exc:
            errors.append(exc)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return errors


def test_both_clients_of_a_worker_serve_all_its_slots_at_once(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store_client, rq_connection = worker_redis_clients(settings, slots=SLOTS)
    clients: list[Any] = [store_client, rq_connection]
    try:
        for client in clients:
            assert _all_at_once(client, f"{settings.key_prefix}:empty", SLOTS) == []
    finally:
        for client in clients:
            client.close()


def test_a_full_pool_makes_a_thread_wait_instead_of_failing(make_settings: Callable[..., Settings]) -> None:
    """Past the pool's size a command waits for a connection: a 320-slot worker hit by a burst of 300 found
    its pools full and lost two thirds of its slots to ``MaxConnectionsError`` (issue 21)."""
    settings = make_settings()
    store_client, rq_connection = worker_redis_clients(settings, slots=2)
    clients: list[Any] = [store_client, rq_connection]
    try:
        for client in clients:
            threads = 2 * client.connection_pool.max_connections  # twice as many commands at once as connections
            assert _all_at_once(client, f"{settings.key_prefix}:empty", threads, wait_s=0.1) == []
    finally:
        for client in clients:
            client.close()
