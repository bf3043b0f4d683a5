"""The sweep: orphaned IN_PROGRESS requests are requeued once then failed; lost/overdue queued ones."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from core.protocol import RequestStatus
from core.requests.api_store import create_request
from core.requests.records import Keys, NewRequest
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker import recovery


def setup(make_settings: Callable[..., Settings], **overrides: object) -> tuple[Settings, WorkerRequestStore]:
    settings = make_settings(lease_ttl_s=0.2, max_requeues=1, **overrides)
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    return settings, store


def enqueue(settings: Settings, rid: str, timeout_s: float | None = None) -> None:
    new = NewRequest(rid, "o", settings.endpoint_id, {"prompt": "p"}, "normal", "http://f", timeout_s)
    create_request(redis.Redis.from_url(settings.redis_url), settings, new)


def queue_ids(store: WorkerRequestStore, settings: Settings) -> list[str]:
    return list(store.client.lrange(Keys.rq_queue(settings.queue_normal), 0, -1))


def test_orphan_requeued_once_then_failed(make_settings: Callable[..., Settings]) -> None:
    settings, store = setup(make_settings)
    enqueue(settings, "r1")
    store.client.lpop(Keys.rq_queue(settings.queue_normal))  # a worker dequeued it ...
    assert store.start("r1", "dead-worker") == "started"  # ... started it, then died
    assert recovery.sweep(store) == {}  # lease still valid
    time.sleep(0.3)
    assert recovery.sweep(store) == {"r1": "requeued"}
    record = store.get("r1")
    assert record is not None and record.status is RequestStatus.IN_QUEUE and record.attempts == 1
    assert queue_ids(store, settings) == ["r1"]  # back at the front of its queue
    store.client.lpop(Keys.rq_queue(settings.queue_normal))
    assert store.start("r1", "dead-again") == "started"
    time.sleep(0.3)
    assert recovery.sweep(store) == {"r1": "runner_disconnected"}
    record = store.get("r1")
    assert record is not None and record.status is RequestStatus.COMPLETED
    assert record.error is not None and record.error.status_code == 503


def test_orphan_with_cancel_flag_completes_cancelled(make_settings: Callable[..., Settings]) -> None:
    settings, store = setup(make_settings)
    enqueue(settings, "r2")
    store.client.lpop(Keys.rq_queue(settings.queue_normal))
    store.start("r2", "w")
    store.client.hset(store.keys.record("r2"), "cancel", "1")
    time.sleep(0.3)
    assert recovery.sweep(store) == {"r2": "client_cancelled"}
    record = store.get("r2")
    assert record is not None and record.error is not None and record.error.status_code == 499


def test_lost_dequeue_is_pushed_back_after_grace(make_settings: Callable[..., Settings]) -> None:
    settings, store = setup(make_settings)
    enqueue(settings, "r3")
    assert store.dequeue([Keys.rq_queue(settings.queue_normal)]) is not None  # taken, worker died before start
    assert queue_ids(store, settings) == []
    assert recovery.sweep(store) == {}  # within the grace period: its worker may be starting it
    time.sleep(0.3)
    assert recovery.sweep(store) == {"r3": "requeued"}
    assert queue_ids(store, settings) == ["r3"]


def test_overdue_queued_request_expires(make_settings: Callable[..., Settings]) -> None:
    settings, store = setup(make_settings)
    enqueue(settings, "r4", timeout_s=0.05)
    time.sleep(0.1)
    assert recovery.sweep(store) == {"r4": "request_timeout"}
    record = store.get("r4")
    assert record is not None and record.error is not None and record.error.status_code == 504
    assert queue_ids(store, settings) == []


def test_killed_workers_are_forgotten(make_settings: Callable[..., Settings]) -> None:
    """A worker killed with SIGKILL never unregisters; its entry must not stay in Redis forever."""
    import asyncio

    import redis.asyncio as aioredis

    from core.requests.api_store import RequestStore

    settings, store = setup(make_settings)  # lease 0.2 s: forgotten after 3 leases without a heartbeat
    store.heartbeat("killed-1")
    store.heartbeat("killed-2")
    time.sleep(3 * settings.lease_ttl_s + 0.1)
    store.heartbeat("alive")  # any live worker's heartbeat forgets the long-dead ones
    assert store.client.zrange(store.keys.workers, 0, -1) == ["alive"]

    store.heartbeat("killed-3")
    time.sleep(3 * settings.lease_ttl_s + 0.1)

    async def alive() -> int:  # with no worker left, the API's /health count forgets them too
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            return await RequestStore(client, settings).alive_workers()
        finally:
            await client.aclose()

    assert asyncio.run(alive()) == 0
    assert store.client.zcard(store.keys.workers) == 0


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_sweep_cost_does_not_grow_with_the_queue(make_settings: Callable[..., Settings]) -> None:
    """One sweep over 1000 queued requests (and an overdue one) sends a handful of Redis commands: it
    reads the small indexes (running, taken, overdue requests), not the queue."""
    from core.requests.api_store import add_request

    settings, store = setup(make_settings)
    conn = redis.Redis.from_url(settings.redis_url)
    with conn.pipeline(transaction=True) as pipe:  # 1000 submits in one MULTI (fast to write)
        pipe.multi()
        for i in range(1000):
            add_request(pipe, conn, settings, NewRequest(f"q{i}", "o", settings.endpoint_id, {}, "normal", "http://f"))
        pipe.execute()
    enqueue(settings, "overdue", timeout_s=0.05)
    time.sleep(0.1)
    before = commands_processed(store.client)
    assert recovery.sweep(store) == {"overdue": "request_timeout"}
    assert commands_processed(store.client) - before < 50  # the old sweep: 2 scripts per queued request
    assert len(queue_ids(store, settings)) == 1000


def test_lease_renewal_is_not_on_the_sweeps_path(make_settings: Callable[..., Settings]) -> None:
    """The heartbeat renews leases without sweeping: a sweep, however slow, cannot let leases expire."""
    from worker.background import Heartbeat

    settings, store = setup(make_settings, sweep_interval_s=0.01)
    swept: list[str] = []

    class RecordingRequestStore(WorkerRequestStore):
        def recover_orphans(self) -> dict[str, str]:
            swept.append("orphans")
            return super().recover_orphans()

    recording = RecordingRequestStore(store.client, settings)
    enqueue(settings, "running")
    store.client.lpop(Keys.rq_queue(settings.queue_normal))
    assert recording.start("running", "w") == "started"

    class Runner:
        current_leases = (("running", "w"),)  # started without a token: the worker's name is its token

        def lose(self, request_id: str, attempt: str) -> None:
            raise AssertionError("the lease is this run's")

    beat = Heartbeat(recording, [("w", Runner())], "w")
    store.client.pexpire(store.keys.lease("running"), 50)
    beat.beat()
    assert store.client.pttl(store.keys.lease("running")) > 100  # renewed to a full lease
    assert swept == []
