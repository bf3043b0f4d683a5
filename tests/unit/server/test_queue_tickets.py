"""Queue positions from tickets (issue 19 item 7), against a real redis-server: a status read and the
streams' shared snapshot show the same positions, exact while requests leave at the head; a cancel
from the middle is counted by those behind it until the head passes it, never more."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from core.protocol import RequestStatus
from core.redis_options import async_redis_options
from core.requests.api_store import RequestStore, create_request
from core.requests.records import Keys, NewRequest
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings


def test_positions_follow_dequeues_and_cancels(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(lease_ttl_s=0.2)  # also the grace before a taken, unstarted request is put back
    sync = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]

    def new(rid: str, priority: str) -> NewRequest:
        return NewRequest(
            request_id=rid, owner="o", endpoint=settings.endpoint_id, input={"prompt": rid}, priority=priority,
            files_base="http://h", start_timeout_s=None, webhook=None, lifecycle=None,
        )  # fmt: skip

    normal = [f"n{i}" for i in range(8)]
    low = [f"l{i}" for i in range(3)]
    for rid in normal:
        create_request(sync, settings, new(rid, "normal"))
    for rid in low:
        create_request(sync, settings, new(rid, "low"))
    worker = WorkerRequestStore(sync, settings)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(
            settings.redis_url, decode_responses=True, **async_redis_options(settings.redis_url)
        )
        store = RequestStore(client, settings)

        async def shown() -> dict[str, int]:
            """Each queued request's position, from a status read; the snapshot's must agree."""
            heads = await store.queue_heads()
            positions = {}
            for rid in [*normal, *low]:
                view = await store.status_view(rid)
                if view.status is not RequestStatus.IN_QUEUE:
                    continue
                assert view.queue_position is not None
                positions[rid] = view.queue_position
                in_list = rid in sync.lrange(lists[0 if rid in normal else 1], 0, -1)
                assert store.position_from_heads(view, heads) == (view.queue_position if in_list else None), rid
            return positions

        def actual() -> dict[str, int]:
            """Where each request really is: the queue lists read whole (what the old LPOS counted)."""
            order = sync.lrange(lists[0], 0, -1) + sync.lrange(lists[1], 0, -1)
            return {rid: index for index, rid in enumerate(order)}

        try:
            assert await shown() == {**{f"n{i}": i for i in range(8)}, **{f"l{i}": 8 + i for i in range(3)}}
            assert worker.dequeue(lists) == (lists[0], "n0")
            assert worker.dequeue(lists) == (lists[0], "n1")
            # taken, not started yet: still IN_QUEUE, out of the list: 0, as before
            assert await shown() == {"n0": 0, "n1": 0, **actual()}

            await store.cancel("n4")  # from the middle: [n2, n3, n5, n6, n7]
            now, real = await shown(), actual()
            assert {rid: now[rid] for rid in real} == real | {"n5": 3, "n6": 4}  # they count the gap n4 left
            assert now["n7"] == real["n7"] == 4  # clamped to the list: never past its end
            assert [now[rid] for rid in ("n2", "n3", "n5", "n6", "n7")] == [0, 1, 3, 4, 4]  # in order

            assert worker.dequeue(lists) == (lists[0], "n2")  # the gap reaches the front: exact again
            assert actual() == {"n3": 0, "n5": 1, "n6": 2, "n7": 3, "l0": 4, "l1": 5, "l2": 6}
            assert await shown() == {"n0": 0, "n1": 0, "n2": 0, **actual()}

            await store.cancel("l0")  # the head of the low queue
            for _ in range(4):
                worker.dequeue(lists)  # n3 to n7: the normal list is empty, the low one is served
            taken = [f"n{i}" for i in (0, 1, 2, 3, 5, 6, 7)]
            assert await shown() == dict.fromkeys(taken, 0) | {"l1": 0, "l2": 1}

            # one taken and abandoned goes back to the front with its older ticket: the others do not move
            for rid in ("m0", "m1", "m2", "m3", "m4"):
                create_request(sync, settings, new(rid, "normal"))
                normal.append(rid)
            for rid in ("m0", "m1", "m2"):
                assert worker.dequeue(lists) == (lists[0], rid)
            for rid in [*taken, "m1", "m2"]:
                assert worker.start(rid, "w") == "started"
            await asyncio.sleep(0.4)
            assert worker.recover_queued() == {"m0": "requeued"}
            assert actual() == {"m0": 0, "m3": 1, "m4": 2, "l1": 3, "l2": 4}
            assert await shown() == actual()
        finally:
            await client.aclose()

    asyncio.run(scenario())
    sync.close()


def test_a_status_read_and_a_queue_move_scan_no_queue_list(make_settings: Callable[..., Settings]) -> None:
    """Before tickets, a status read ran LPOS (O(position)) and each queue move LRANGE of both lists."""
    settings = make_settings()
    sync = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rids = [f"q{i}" for i in range(50)]
    for rid in rids:
        create_request(sync, settings, NewRequest(rid, "o", settings.endpoint_id, {"prompt": rid}, "normal", "h", None))

    def scans() -> dict[str, int]:
        stats = sync.info("commandstats")
        return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("lpos", "lrange")}

    async def read() -> list[int | None]:
        client = aioredis.Redis.from_url(
            settings.redis_url, decode_responses=True, **async_redis_options(settings.redis_url)
        )
        try:
            store = RequestStore(client, settings)
            views = [await store.status_view(rid) for rid in (rids[0], rids[1], rids[-1])]
            heads = await store.queue_heads()
            return [view.queue_position for view in views] + [store.position_from_heads(v, heads) for v in views]
        finally:
            await client.aclose()

    before = scans()
    assert asyncio.run(read()) == [0, 1, 49, 0, 1, 49]
    assert scans() == before
    sync.close()
