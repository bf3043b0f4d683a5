"""The workers' view of request records (sync, as RQ workers are): dequeue, start, claim, lease, log,
complete, metrics, heartbeats and the recovery sweeps.

The sweeps read only small indexes (requests running, taken but not started, or past a start deadline),
never the queue itself, so their cost does not grow with the number of queued requests.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rq.job import Job

from server.errors import RequestTimeoutError, RunnerDisconnectedError, StoredError
from server.protocol import LogEntry
from server.queue import scripts
from server.queue.records import INFERENCE_BUCKETS_S, OUTCOME_OK, Keys, RequestRecord, as_str, cancelled_error
from server.settings import Settings

SWEEP_BATCH = 1000  # at most this many entries of each index per sweep (the rest in the next ones)


class WorkerJobStore:
    """Sync access to request records for workers (RQ workers are sync)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._dequeue = client.register_script(scripts.DEQUEUE)
        self._start = client.register_script(scripts.START)
        self._claim = client.register_script(scripts.CLAIM)
        self._complete = client.register_script(scripts.COMPLETE)
        self._cancel = client.register_script(scripts.CANCEL_QUEUED)
        self._orphan = client.register_script(scripts.RECOVER_ORPHAN)
        self._recover_dequeued = client.register_script(scripts.RECOVER_DEQUEUED)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    def get(self, rid: str) -> RequestRecord | None:
        data = self.client.hgetall(self.keys.record(rid))
        return RequestRecord.from_hash(rid, data) if data and "status" in data else None

    def dequeue(self, queue_keys: list[str]) -> tuple[str, str] | None:
        """(RQ list, request id) taken off the first non-empty list, noted as taken; None if all are empty."""
        taken = self._dequeue(keys=[self.keys.dequeued, *queue_keys], args=[repr(time.time())])
        return (as_str(taken[0]), as_str(taken[1])) if taken else None

    def start(self, rid: str, worker: str) -> str:
        """'started', or why not: 'missing', 'completed' (cancelled/expired), 'leased', 'overdue'."""
        keys = [self.keys.record(rid), self.keys.lease(rid), self.keys.queued, self.keys.active, self.keys.dequeued]
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
        args: list[str | int] = [rid, worker, repr(time.time()), self.lease_ms, self.settings.record_ttl_s]
        return str(self._claim(keys=keys, args=args))

    def refresh_lease(self, rid: str, worker: str) -> None:
        self.client.set(self.keys.lease(rid), worker, px=self.lease_ms)

    def append_log(self, rid: str, entry: LogEntry) -> None:
        """Append a log entry and tell the request's status streams (one round trip)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.keys.logs(rid), entry.model_dump_json())
            pipe.publish(self.keys.changed(rid), "log")
            pipe.execute()

    def is_cancel_requested(self, rid: str) -> bool:
        return self.client.hget(self.keys.record(rid), "cancel") == "1"

    def complete_ok(self, rid: str, result: dict[str, Any], inference_time: float | None) -> bool:
        return self._finish(rid, json.dumps(result), "", inference_time, OUTCOME_OK)

    def complete_error(self, rid: str, error: StoredError, inference_time: float | None = None) -> bool:
        outcome = error.error_type or f"http_{error.status_code}"
        return self._finish(rid, "", json.dumps(error.to_dict()), inference_time, outcome)

    def _running_keys(self, rid: str) -> list[str]:
        """KEYS of the scripts that end a running request (COMPLETE, RECOVER_ORPHAN)."""
        keys = self.keys
        return [keys.record(rid), keys.logs(rid), keys.lease(rid), keys.queued, keys.active, keys.stats, keys.webhooks]

    def _finish(self, rid: str, result: str, error: str, seconds: float | None, outcome: str) -> bool:
        keys = self._running_keys(rid)
        timing = repr(seconds) if seconds is not None else ""
        args: list[str | int] = [rid, repr(time.time()), result, error, timing, self.settings.record_ttl_s, outcome]
        return bool(self._complete(keys=keys, args=args))

    def record_inference(self, seconds: float, images: int) -> None:
        """Metrics of one finished request: its inference seconds (histogram) and images made."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.keys.stats, "images_generated", images)
            pipe.hincrbyfloat(self.keys.stats, "inference_sum", seconds)
            pipe.hincrby(self.keys.stats, "inference_count", 1)
            for bound in INFERENCE_BUCKETS_S:
                if seconds <= bound:
                    pipe.hincrby(self.keys.stats, f"inference_le:{bound}", 1)
            pipe.execute()

    def heartbeat(self, worker: str, info: dict[str, Any] | None = None) -> None:
        """Mark ``worker`` alive now, keep its ``info`` (device, model) while heartbeats come, and forget
        the workers that stopped beating long ago."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers, {worker: now})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now - self.settings.worker_forget_after_s)
            if info is not None:
                pipe.set(self.keys.worker_info(worker), json.dumps(info), px=3 * self.lease_ms)
            pipe.execute()

    def alive_worker_names(self) -> list[str]:
        """Workers whose last heartbeat is younger than the lease (the API's ``alive_workers``)."""
        since = time.time() - self.settings.lease_ttl_s
        return [as_str(name) for name in self.client.zrangebyscore(self.keys.workers, since, "+inf")]

    def remove_worker(self, worker: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.workers, worker)
            pipe.delete(self.keys.worker_info(worker))
            pipe.execute()

    def try_acquire_sweep(self, owner: str) -> bool:
        """At most one sweeper per interval across all workers."""
        px = max(int(self.settings.sweep_interval_s * 1000), 1)
        return bool(self.client.set(self.keys.sweep_lock, owner, nx=True, px=px))

    def recover_orphans(self) -> dict[str, str]:
        """Requests left IN_PROGRESS by dead workers: requeue once, else COMPLETED with an error.

        Reads the set of running requests (as many as the workers run), not the queue."""
        failed = json.dumps(RunnerDisconnectedError().to_stored().to_dict())
        outcomes: dict[str, str] = {}
        for rid in map(as_str, self.client.smembers(self.keys.active)):
            keys = self._running_keys(rid)
            args: list[str | int] = [rid, repr(time.time()), self.settings.max_requeues, failed, cancelled_error()]
            outcomes[rid] = str(self._orphan(keys=keys, args=[*args, self.settings.record_ttl_s]))
        return outcomes

    def recover_queued(self) -> dict[str, str]:
        """Queued requests: expire those past their start deadline, push back those taken and never started.

        Reads only the due entries of the deadline and dequeue indexes, never the queue."""
        outcomes = self.expire_overdue()
        grace = self.settings.lease_ttl_s
        taken = self.client.zrangebyscore(self.keys.dequeued, "-inf", time.time() - grace, start=0, num=SWEEP_BATCH)
        for rid in map(as_str, taken):
            keys = [self.keys.record(rid), self.keys.dequeued, self.keys.queued]
            outcomes[rid] = str(self._recover_dequeued(keys=keys, args=[rid]))
        return outcomes

    def expire_overdue(self) -> dict[str, str]:
        """Complete queued requests whose start deadline passed with 504 request_timeout."""
        timeout_error = json.dumps(RequestTimeoutError().to_stored().to_dict())
        now = repr(time.time())
        outcomes: dict[str, str] = {}
        due = self.client.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=SWEEP_BATCH)
        for rid in map(as_str, due):
            keys = [self.keys.record(rid), self.keys.logs(rid), self.keys.queued, self.keys.stats, self.keys.webhooks]
            args: list[str | int] = [rid, now, timeout_error, self.settings.record_ttl_s, "expire", "request_timeout"]
            outcome = str(self._cancel(keys=keys, args=args))
            if outcome != "pending":  # expired now, or no longer queued: its deadline no longer matters
                self.client.zrem(self.keys.deadlines, rid)
            outcomes[rid] = outcome
        return outcomes
