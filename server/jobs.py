"""The request record in Redis and its state machine: submit, start, log, complete, cancel, recover.

A request is a hash ``<prefix>:req:<id>`` (status, owner, input, result or error, timestamps) plus a
list of fal log entries ``<prefix>:req:<id>:logs``. The record is written in the same MULTI as the
RQ job that carries ``worker.tasks.run_request(id)``, before submit answers. Transitions are Lua
scripts (``server.jobscripts``), so the API and any number of workers can race safely.
``JobStore`` is the async face used by the API; ``WorkerJobStore`` the sync face used by workers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.job import Job

from server import jobscripts
from server.errors import (
    ClientCancelledError,
    RequestNotFoundError,
    RequestTimeoutError,
    RunnerDisconnectedError,
    StoredError,
)
from server.protocol import JobStatus, LogEntry
from server.settings import Settings

TASK_FUNCTION = "worker.tasks.run_request"
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


def async_redis_options() -> dict[str, Any]:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff

    options = redis_client_options()
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS)
    return options


OUTCOME_OK = "ok"


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix."""

    prefix: str

    def record(self, rid: str) -> str:
        return f"{self.prefix}:req:{rid}"

    def logs(self, rid: str) -> str:
        return f"{self.prefix}:req:{rid}:logs"

    def lease(self, rid: str) -> str:
        return f"{self.prefix}:lease:{rid}"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:queued"

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep-lock"

    def upload(self, token: str) -> str:
        return f"{self.prefix}:upload:{token}"

    @staticmethod
    def rq_queue(queue: str) -> str:
        return f"rq:queue:{queue}"


@dataclass(frozen=True)
class RequestRecord:
    """One request as stored in Redis (decoded)."""

    request_id: str
    status: JobStatus
    owner: str
    endpoint: str
    input: dict[str, Any]
    queue: str
    created_at: float
    gateway_request_id: str
    files_base: str
    started_at: float | None = None
    completed_at: float | None = None
    deadline: float | None = None
    webhook: str | None = None
    lifecycle: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: StoredError | None = None
    inference_time: float | None = None
    attempts: int = 0
    is_cancel_requested: bool = False

    @classmethod
    def from_hash(cls, rid: str, data: dict[str, str]) -> RequestRecord:
        def number(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value not in (None, "") else None

        return cls(
            request_id=rid,
            status=JobStatus(data["status"]),
            owner=data.get("owner", ""),
            endpoint=data.get("endpoint", ""),
            input=json.loads(data.get("input") or "{}"),
            queue=data.get("queue", ""),
            created_at=float(data.get("created_at") or 0),
            gateway_request_id=data.get("gateway_request_id", rid),
            files_base=data.get("files_base", ""),
            started_at=number("started_at"),
            completed_at=number("completed_at"),
            deadline=number("deadline"),
            webhook=data.get("webhook") or None,
            lifecycle=json.loads(data["lifecycle"]) if data.get("lifecycle") else None,
            result=json.loads(data["result"]) if data.get("result") else None,
            error=StoredError.from_dict(json.loads(data["error"])) if data.get("error") else None,
            inference_time=number("inference_time"),
            attempts=int(data.get("attempts") or 0),
            is_cancel_requested=data.get("cancel") == "1",
        )

    @property
    def file_ttl_s(self) -> int | None:
        """Expiry asked for with ``x-fal-object-lifecycle-preference``, if any."""
        value = (self.lifecycle or {}).get("expiration_duration_seconds")
        return int(value) if value is not None else None

    def metrics(self) -> dict[str, Any]:
        if self.status is not JobStatus.COMPLETED:
            return {}
        return {"inference_time": self.inference_time}


@dataclass(frozen=True)
class NewRequest:
    """What submit stores."""

    request_id: str
    owner: str
    endpoint: str
    input: dict[str, Any]
    priority: str
    files_base: str
    start_timeout_s: float | None = None
    webhook: str | None = None
    lifecycle: dict[str, Any] | None = None


def cancelled_error() -> str:
    return json.dumps(ClientCancelledError().to_stored().to_dict())


def create_request(conn: redis.Redis, settings: Settings, new: NewRequest) -> None:
    """Write the record and enqueue its RQ job in one MULTI (sync: RQ is sync; run it in a thread)."""
    keys = Keys(settings.key_prefix)
    now = time.time()
    queue_name = settings.queue_low if new.priority == "low" else settings.queue_normal
    record: dict[str, Any] = {
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
        self._cancel = client.register_script(jobscripts.CANCEL_QUEUED)

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
        pos = await self.client.lpos(Keys.rq_queue(record.queue), record.request_id)
        if pos is None:
            return 0
        if record.queue == self.settings.queue_low:
            pos += await self.client.llen(Keys.rq_queue(self.settings.queue_normal))
        return int(pos)

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
        return [self.keys.record(rid), self.keys.logs(rid), self.keys.queued, self.keys.stats]

    def _cancel_args(self, rid: str, mode: str) -> list[str]:
        if mode == "cancel":
            error, outcome = cancelled_error(), "client_cancelled"
        else:
            error, outcome = json.dumps(RequestTimeoutError().to_stored().to_dict()), "request_timeout"
        return [rid, repr(time.time()), error, str(self.settings.record_ttl_s), mode, outcome]

    async def stats(self) -> dict[str, str]:
        return dict(await self.client.hgetall(self.keys.stats))

    async def status_counts(self) -> dict[str, int]:
        return {
            JobStatus.IN_QUEUE.value: int(await self.client.scard(self.keys.queued)),
            JobStatus.IN_PROGRESS.value: int(await self.client.scard(self.keys.active)),
        }

    async def alive_workers(self) -> int:
        since = time.time() - self.settings.lease_ttl_s
        return int(await self.client.zcount(self.keys.workers, since, "+inf"))


INFERENCE_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)


class WorkerJobStore:
    """Sync access to request records for workers (RQ workers are sync)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._start = client.register_script(jobscripts.START)
        self._claim = client.register_script(jobscripts.CLAIM)
        self._complete = client.register_script(jobscripts.COMPLETE)
        self._cancel = client.register_script(jobscripts.CANCEL_QUEUED)
        self._orphan = client.register_script(jobscripts.RECOVER_ORPHAN)
        self._lost = client.register_script(jobscripts.RECOVER_LOST)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    def get(self, rid: str) -> RequestRecord | None:
        data = self.client.hgetall(self.keys.record(rid))
        return RequestRecord.from_hash(rid, data) if data and "status" in data else None

    def start(self, rid: str, worker: str) -> str:
        """'started', or why not: 'missing', 'completed' (cancelled/expired), 'leased', 'overdue'."""
        keys = [self.keys.record(rid), self.keys.lease(rid), self.keys.queued, self.keys.active]
        return str(self._start(keys=keys, args=[rid, worker, repr(time.time()), self.lease_ms]))

    def queued_ids(self, queue: str, limit: int) -> list[str]:
        """The first ``limit`` request ids waiting in an RQ queue, in serving order."""
        return [str(rid) for rid in self.client.lrange(Keys.rq_queue(queue), 0, limit - 1)]

    def claim(self, rid: str, worker: str, queue: str) -> str:
        """Start a still-queued request as part of a batch: 'started', 'not_queued' or 'overdue'."""
        keys = [
            self.keys.record(rid),
            self.keys.lease(rid),
            self.keys.queued,
            self.keys.active,
            Keys.rq_queue(queue),
            str(Job.key_for(rid)),
        ]
        args = [rid, worker, repr(time.time()), self.lease_ms, self.settings.record_ttl_s]
        return str(self._claim(keys=keys, args=args))

    def refresh_lease(self, rid: str, worker: str) -> None:
        self.client.set(self.keys.lease(rid), worker, px=self.lease_ms)

    def append_log(self, rid: str, entry: LogEntry) -> None:
        self.client.rpush(self.keys.logs(rid), entry.model_dump_json())

    def is_cancel_requested(self, rid: str) -> bool:
        return self.client.hget(self.keys.record(rid), "cancel") == "1"

    def complete_ok(self, rid: str, result: dict[str, Any], inference_time: float | None) -> bool:
        return self._finish(rid, json.dumps(result), "", inference_time, OUTCOME_OK)

    def complete_error(self, rid: str, error: StoredError, inference_time: float | None = None) -> bool:
        outcome = error.error_type or f"http_{error.status_code}"
        return self._finish(rid, "", json.dumps(error.to_dict()), inference_time, outcome)

    def _finish(self, rid: str, result: str, error: str, seconds: float | None, outcome: str) -> bool:
        keys = [
            self.keys.record(rid),
            self.keys.logs(rid),
            self.keys.lease(rid),
            self.keys.queued,
            self.keys.active,
            self.keys.stats,
        ]
        timing = repr(seconds) if seconds is not None else ""
        args = [rid, repr(time.time()), result, error, timing, self.settings.record_ttl_s, outcome]
        return bool(self._complete(keys=keys, args=args))

    def record_inference_seconds(self, seconds: float) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(self.keys.stats, "inference_sum", seconds)
            pipe.hincrby(self.keys.stats, "inference_count", 1)
            for bound in INFERENCE_BUCKETS_S:
                if seconds <= bound:
                    pipe.hincrby(self.keys.stats, f"inference_le:{bound}", 1)
            pipe.execute()

    def heartbeat(self, worker: str) -> None:
        self.client.zadd(self.keys.workers, {worker: time.time()})

    def remove_worker(self, worker: str) -> None:
        self.client.zrem(self.keys.workers, worker)

    def try_acquire_sweep(self, owner: str) -> bool:
        """At most one sweeper per interval across all workers."""
        px = max(int(self.settings.sweep_interval_s * 1000), 1)
        return bool(self.client.set(self.keys.sweep_lock, owner, nx=True, px=px))

    def recover_orphans(self) -> dict[str, str]:
        """Requests left IN_PROGRESS by dead workers: requeue once, else COMPLETED with an error."""
        failed = json.dumps(RunnerDisconnectedError().to_stored().to_dict())
        outcomes: dict[str, str] = {}
        for rid in self.client.smembers(self.keys.active):
            keys = [
                self.keys.record(rid),
                self.keys.logs(rid),
                self.keys.lease(rid),
                self.keys.queued,
                self.keys.active,
                self.keys.stats,
            ]
            args = [rid, repr(time.time()), self.settings.max_requeues, failed, cancelled_error()]
            outcomes[rid] = str(self._orphan(keys=keys, args=[*args, self.settings.record_ttl_s]))
        return outcomes

    def recover_queued(self) -> dict[str, str]:
        """Queued requests: expire those past their start deadline, re-push those lost in a dequeue."""
        timeout_error = json.dumps(RequestTimeoutError().to_stored().to_dict())
        outcomes: dict[str, str] = {}
        for rid in self.client.smembers(self.keys.queued):
            keys = [self.keys.record(rid), self.keys.logs(rid), self.keys.queued, self.keys.stats]
            now = repr(time.time())
            args = [rid, now, timeout_error, self.settings.record_ttl_s, "expire", "request_timeout"]
            outcome = str(self._cancel(keys=keys, args=args))
            if outcome in ("missing", "completed"):
                self.client.srem(self.keys.queued, rid)
            elif outcome in ("pending", "requested"):
                grace = self.settings.lease_ttl_s
                outcome = str(self._lost(keys=[self.keys.record(rid), self.keys.queued], args=[rid, now, grace]))
            outcomes[rid] = outcome
        return outcomes
