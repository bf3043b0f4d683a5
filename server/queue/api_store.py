"""Submitting requests and the API's view of them: create, read, logs, queue position, cancel.

The record is written in the same MULTI as the RQ job that carries ``worker.tasks.run_request(id)``,
before submit answers. Transitions are Lua scripts (``server.queue.scripts``), so the API and any number
of workers can race safely. ``JobStore`` is the async face used by the API; workers use
``server.queue.worker_store.WorkerJobStore``.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from rq import Queue

from server.errors import RequestNotFoundError, RequestTimeoutError
from server.protocol import JobStatus
from server.queue import scripts
from server.queue.records import Keys, NewRequest, RequestRecord, cancelled_error, decoded
from server.settings import Settings

TASK_FUNCTION = "worker.tasks.run_request"


def create_request(conn: redis.Redis, settings: Settings, new: NewRequest) -> None:
    """Write the record and enqueue its RQ job in one MULTI (sync: RQ is sync; run it in a thread)."""
    keys = Keys(settings.key_prefix)
    now = time.time()
    queue_name = settings.queue_low if new.priority == "low" else settings.queue_normal
    record: dict[Any, str | int] = {  # Any keys: redis-py's mapping type is invariant in them
        "status": JobStatus.IN_QUEUE.value,
        "owner": new.owner,
        "endpoint": new.endpoint,
        "input": json.dumps(new.input),
        "queue": queue_name,
        "created_at": repr(now),
        "gateway_request_id": new.request_id,
        "files_base": new.files_base,
        "attempts": 0,
        "deadline": repr(now + new.start_timeout_s) if new.start_timeout_s else "",
        "webhook": new.webhook or "",
        "lifecycle": json.dumps(new.lifecycle) if new.lifecycle else "",
    }
    queue = Queue(queue_name, connection=conn)
    with conn.pipeline(transaction=True) as pipe:
        pipe.multi()  # RQ expects an explicit MULTI on a caller's pipeline
        pipe.hset(keys.record(new.request_id), mapping=record)
        pipe.sadd(keys.queued, new.request_id)
        pipe.hincrby(keys.stats, "submitted", 1)
        queue.enqueue_call(
            TASK_FUNCTION,
            args=(new.request_id,),
            job_id=new.request_id,
            timeout=settings.job_timeout_s,
            result_ttl=0,
            failure_ttl=settings.record_ttl_s,
            description=f"bitdance request {new.request_id}",
            pipeline=pipe,
        )
        pipe.execute()


class JobStore:
    """Async access to request records for the API."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._cancel = client.register_script(scripts.CANCEL_QUEUED)

    async def get(self, rid: str, owner: str | None = None) -> RequestRecord:
        """The record; unknown ids and other owners' ids are both ``RequestNotFoundError``."""
        data = await self.client.hgetall(self.keys.record(rid))
        if not data or "status" not in data:
            raise RequestNotFoundError()
        record = RequestRecord.from_hash(rid, data)
        if owner is not None and record.owner != owner:
            raise RequestNotFoundError()
        if record.status is JobStatus.IN_QUEUE and record.deadline and time.time() > record.deadline:
            await self.expire_overdue(rid)
            return await self.get(rid, owner)
        return record

    async def logs(self, rid: str, start: int = 0) -> list[dict[str, Any]]:
        raw = await self.client.lrange(self.keys.logs(rid), start, -1)
        return [json.loads(item) for item in raw]

    async def queue_position(self, record: RequestRecord) -> int:
        """Requests ahead of this one (0 = next): the normal queue is served before the low one."""
        found = await self.client.lpos(Keys.rq_queue(record.queue), record.request_id)
        if found is None:
            return 0
        pos = int(cast(int, found))  # a single position: no COUNT given
        if record.queue == self.settings.queue_low:
            pos += int(await self.client.llen(Keys.rq_queue(self.settings.queue_normal)))
        return pos

    async def queue_depth(self) -> dict[str, int]:
        names = (self.settings.queue_normal, self.settings.queue_low)
        return {name: int(await self.client.llen(Keys.rq_queue(name))) for name in names}

    async def cancel(self, rid: str) -> str:
        """'cancelled' (was queued, now COMPLETED), 'requested' (running), 'completed', 'missing'."""
        return str(await self._cancel(keys=self._cancel_keys(rid), args=self._cancel_args(rid, "cancel")))

    async def expire_overdue(self, rid: str) -> str:
        """Complete a queued request whose start deadline passed with 504 request_timeout."""
        return str(await self._cancel(keys=self._cancel_keys(rid), args=self._cancel_args(rid, "expire")))

    def _cancel_keys(self, rid: str) -> list[str]:
        return [self.keys.record(rid), self.keys.logs(rid), self.keys.queued, self.keys.stats, self.keys.webhooks]

    def _cancel_args(self, rid: str, mode: str) -> list[str]:
        if mode == "cancel":
            error, outcome = cancelled_error(), "client_cancelled"
        else:
            error, outcome = json.dumps(RequestTimeoutError().to_stored().to_dict()), "request_timeout"
        return [rid, repr(time.time()), error, str(self.settings.record_ttl_s), mode, outcome]

    async def stats(self) -> dict[str, str]:
        return decoded(await self.client.hgetall(self.keys.stats))

    async def status_counts(self) -> dict[str, int]:
        return {
            JobStatus.IN_QUEUE.value: int(await self.client.scard(self.keys.queued)),
            JobStatus.IN_PROGRESS.value: int(await self.client.scard(self.keys.active)),
        }

    async def webhook_backlog(self) -> int:
        return int(await self.client.zcard(self.keys.webhooks))

    async def alive_workers(self) -> int:
        """Workers that beat within a lease; also forgets long-dead ones (killed workers never unregister)."""
        now = time.time()
        await self.client.zremrangebyscore(self.keys.workers, "-inf", now - self.settings.worker_forget_after_s)
        return int(await self.client.zcount(self.keys.workers, now - self.settings.lease_ttl_s, "+inf"))
