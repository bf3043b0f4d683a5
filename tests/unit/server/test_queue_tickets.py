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
    settings = make_settings()
    sync = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]

    def new(rid: str, priority: str) -> NewRequest:
        return NewRequest(
            request_id=rid, owner="o", endpoint=settings.endpoint_id, input={"prompt": rid}, priority=priority,
            files_base="http://h", start_timeout_s=None, webhook=None, lifecycle=None,
        )  # fmt: skip

    normal = [f"n{i}" for i in range(6)]
    low = [f"l{i}" for i in range(3)]
    for rid in normal:
        create_request(sync, settings, new(rid, "normal"))
    for rid in low:
        create_request(sync, settings, new(rid, "low"))
    worker = WorkerRequestStore(sync, settings)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, **async_redis_options())
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
            assert await shown() == {**{f"n{i}": i for i in range(6)}, **{f"l{i}": 6 + i for i in range(3)}}
            assert worker.dequeue(lists) == (lists[0], "n0")
            assert worker.dequeue(lists) == (lists[0], "n1")
            # taken, not started yet: still IN_QUEUE, out of the list: 0, as before
            assert await shown() == {"n0": 0, "n1": 0, **actual()}

            await store.cancel("n3")  # from the middle
            now, real = await shown(), actual()
            assert now["n2"] == 0 and now["n4"] == 2 and real["n4"] == 1  # n4 counts the gap n3 left
            assert now["n5"] == real["n5"] == 2  # clamped to the list: never past its end
            assert now["l0"] == real["l0"]  # the low queue counts the normal list's length
            assert [now[rid] for rid in ("n2", "n4", "n5")] == sorted(now[rid] for rid in ("n2", "n4", "n5"))

            assert worker.dequeue(lists) == (lists[0], "n2")  # the head passes the gap: exact again
            assert await shown() == {"n0": 0, "n1": 0, "n2": 0, **actual()}
            assert actual() == {"n4": 0, "n5": 1, "l0": 2, "l1": 3, "l2": 4}

            await store.cancel("l0")  # the head of the low queue
            for _ in range(2):
                worker.dequeue(lists)  # n4, n5: the normal list is empty, the low one is served
            assert await shown() == {f"n{i}": 0 for i in (0, 1, 2, 4, 5)} | {"l1": 0, "l2": 1}
        finally:
            await client.aclose()

    asyncio.run(scenario())
    sync.close()
