"""The workers' view of request records (sync, as RQ workers are): dequeue, start, claim, lease, log,
complete, metrics, heartbeats and the recovery sweeps.

The sweeps read only small indexes (requests running, taken but not started, or past a start deadline),
never the queue itself, so their cost does not grow with the number of queued requests.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from core.errors import StoredError
from core.protocol import LogEntry
from core.requests import scripts
from core.requests.records import INFERENCE_BUCKETS_S, LOGS_CHANGED, OUTCOME_OK, Keys, RequestRecord, as_str, owner_tag
from core.requests.scripts import CancelMode, CancelOutcome, ClaimOutcome, RecoverOutcome, StartOutcome
from core.settings import Settings

logger = logging.getLogger(__name__)

SWEEP_BATCH = 1000  # at most this many entries of each index per sweep (the rest in the next ones)


def new_attempt(worker: str) -> str:
    """A fresh token for one run of a request by ``worker`` (its lease holds it)."""
    return f"{worker}#{secrets.token_hex(6)}"


class WorkerRequestStore:
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
        self._admit = client.register_script(scripts.ADMIT)
        self._release = client.register_script(scripts.RELEASE_DEFERRED)
        self._refresh_lease = client.register_script(scripts.REFRESH_LEASE)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    def get(self, rid: str) -> RequestRecord | None:
        data = self.client.hgetall(self.keys.record(rid))
        return RequestRecord.from_hash(rid, data) if data and "status" in data else None

    def dequeue(self, queue_keys: list[str]) -> tuple[str, str] | None:
        """(RQ list, request id) taken off the first non-empty list, noted as taken; None if all are empty.

        With ``max_running_per_key``, a request whose key already runs that many is deferred (it
        waits, still queued, in its key's deferred list) and the next one is taken instead."""
        while True:
            call = scripts.dequeue_call(self.keys, queue_lists=queue_keys, now=time.time())
            taken = self._dequeue(keys=call.keys, args=call.args)
            if not taken:
                return None
            rid = as_str(taken[1])
            if self.admit(rid, defer=True) is not scripts.AdmitOutcome.DEFERRED:
                return (as_str(taken[0]), rid)
            logger.info("deferred request request_id=%s: its key runs its limit", rid)

    def admit(self, rid: str, *, defer: bool) -> scripts.AdmitOutcome:
        """``ADMITTED`` when the request's key may run one more (always, without a per-key limit)."""
        limit = self.settings.max_running_per_key
        if limit <= 0:
            return scripts.AdmitOutcome.ADMITTED
        call = scripts.admit_call(self.keys, request_id=rid, limit=limit, defer=defer)
        return scripts.AdmitOutcome(as_str(self._admit(keys=call.keys, args=call.args)))

    def release_deferred(self, owners: Iterable[str] = ()) -> int:
        """Put back in their queues the deferred requests of ``owners`` (none given: of every key with
        some) that their keys have room to run now; how many. After a request ends, and in the sweep."""
        limit = self.settings.max_running_per_key
        if limit <= 0:
            limit = 1 << 30  # the limit was lifted: release everything still deferred
        tags = {owner_tag(o) for o in owners} or {as_str(t) for t in self.client.smembers(self.keys.deferred_owners)}
        released = 0
        for tag in tags:
            call = scripts.release_deferred_call(self.keys, tag=tag, limit=limit)
            released += int(self._release(keys=call.keys, args=call.args))
        return released

    def start(self, rid: str, worker: str, attempt: str | None = None) -> StartOutcome:
        """``STARTED``, or why not (``StartOutcome``); leased to the run ``attempt`` (``new_attempt``;
        default: the worker's name)."""
        call = scripts.start_call(
            self.keys, request_id=rid, worker=worker, now=time.time(), lease_ms=self.lease_ms, attempt=attempt
        )
        return StartOutcome(as_str(self._start(keys=call.keys, args=call.args)))

    def queued_ids(self, queue: str, limit: int) -> list[str]:
        """The first ``limit`` request ids waiting in an RQ queue, in serving order."""
        return [str(rid) for rid in self.client.lrange(Keys.rq_queue(queue), 0, limit - 1)]

    def claim(self, rid: str, worker: str, queue: str, attempt: str | None = None) -> ClaimOutcome:
        """Start a still-queued request as part of a batch (``ClaimOutcome``), leased as ``start`` leases."""
        call = scripts.claim_call(
            self.keys,
            request_id=rid,
            worker=worker,
            queue=queue,
            now=time.time(),
            lease_ms=self.lease_ms,
            job_ttl_s=self.settings.record_ttl_s,
            attempt=attempt,
        )
        return ClaimOutcome(as_str(self._claim(keys=call.keys, args=call.args)))

    def refresh_lease(self, rid: str, attempt: str) -> bool:
        """Renew the lease of the run ``attempt`` (the token it started with); False when that run no
        longer holds the request (it was requeued or completed since: the run must stop and discard)."""
        call = scripts.refresh_lease_call(self.keys, request_id=rid, attempt=attempt, lease_ms=self.lease_ms)
        return bool(self._refresh_lease(keys=call.keys, args=call.args))

    def holds(self, rid: str, attempt: str) -> bool:
        """True while the run ``attempt`` holds the request (IN_PROGRESS under that attempt token)."""
        status, held = self.client.hmget(self.keys.record(rid), "status", "attempt_token")
        return as_str(status) == "IN_PROGRESS" and held is not None and as_str(held) == attempt

    def append_log(self, rid: str, entry: LogEntry, read_cancel: bool = False) -> bool | None:
        """Append a log entry and tell the request's status streams (one round trip); with ``read_cancel``,
        read the cancel flag in the same round trip and return it."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.keys.logs(rid), entry.model_dump_json())
            pipe.publish(self.keys.changed(rid), LOGS_CHANGED)
            if read_cancel:
                pipe.hget(self.keys.record(rid), "cancel")
            replies = pipe.execute()
        return replies[2] == "1" if read_cancel else None

    def is_cancel_requested(self, rid: str) -> bool:
        return self.client.hget(self.keys.record(rid), "cancel") == "1"

    def complete_ok(
        self, rid: str, result: dict[str, Any], inference_time: float | None, attempt: str | None = None
    ) -> bool:
        """Complete with ``result``; True when this call completed it. With ``attempt``, only while that
        run holds the request: a stalled worker's late result is refused (False)."""
        return self._finish(rid, json.dumps(result), "", inference_time, OUTCOME_OK, attempt)

    def complete_error(
        self, rid: str, error: StoredError, inference_time: float | None = None, attempt: str | None = None
    ) -> bool:
        outcome = error.error_type or f"http_{error.status_code}"
        return self._finish(rid, "", json.dumps(error.to_dict()), inference_time, outcome, attempt)

    def _finish(
        self, rid: str, result: str, error: str, seconds: float | None, outcome: str, attempt: str | None
    ) -> bool:
        call = scripts.complete_call(
            self.keys,
            request_id=rid,
            now=time.time(),
            result_json=result,
            error_json=error,
            inference_time=seconds,
            ttl_s=self.settings.record_ttl_s,
            outcome=outcome,
            attempt=attempt,
        )
        return int(self._complete(keys=call.keys, args=call.args)) == 1

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
        self.heartbeat_all([worker], info)

    def heartbeat_all(self, workers: Sequence[str], info: dict[str, Any] | None = None) -> None:
        """``heartbeat`` for each of ``workers`` (the slots of one process), in one round trip."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers, dict.fromkeys(workers, now))
            pipe.zremrangebyscore(self.keys.workers, "-inf", now - self.settings.worker_forget_after_s)
            if info is not None:
                text = json.dumps(info)
                for worker in workers:
                    pipe.set(self.keys.worker_info(worker), text, px=3 * self.lease_ms)
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

    def recover_orphans(self) -> dict[str, RecoverOutcome]:
        """Requests left IN_PROGRESS by dead workers: requeue once, else COMPLETED with an error.

        Reads the set of running requests (as many as the workers run), not the queue."""
        outcomes: dict[str, RecoverOutcome] = {}
        for rid in map(as_str, self.client.smembers(self.keys.active)):
            call = scripts.recover_orphan_call(
                self.keys,
                request_id=rid,
                now=time.time(),
                max_requeues=self.settings.max_requeues,
                ttl_s=self.settings.record_ttl_s,
            )
            outcomes[rid] = RecoverOutcome(as_str(self._orphan(keys=call.keys, args=call.args)))
        return outcomes

    def recover_queued(self) -> dict[str, CancelOutcome | RecoverOutcome]:
        """Queued requests: expire those past their start deadline, push back those taken and never started.

        Reads only the due entries of the deadline and dequeue indexes, never the queue."""
        outcomes: dict[str, CancelOutcome | RecoverOutcome] = {**self.expire_overdue()}
        grace = self.settings.lease_ttl_s
        taken = self.client.zrangebyscore(self.keys.dequeued, "-inf", time.time() - grace, start=0, num=SWEEP_BATCH)
        for rid in map(as_str, taken):
            call = scripts.recover_dequeued_call(self.keys, request_id=rid)
            outcomes[rid] = RecoverOutcome(as_str(self._recover_dequeued(keys=call.keys, args=call.args)))
        return outcomes

    def expire_overdue(self) -> dict[str, CancelOutcome]:
        """Complete queued requests whose start deadline passed with 504 request_timeout."""
        now = time.time()
        outcomes: dict[str, CancelOutcome] = {}
        due = self.client.zrangebyscore(self.keys.deadlines, "-inf", repr(now), start=0, num=SWEEP_BATCH)
        for rid in map(as_str, due):
            call = scripts.cancel_queued_call(
                self.keys, request_id=rid, mode=CancelMode.EXPIRE, now=now, ttl_s=self.settings.record_ttl_s
            )
            outcome = CancelOutcome(as_str(self._cancel(keys=call.keys, args=call.args)))
            if outcome is not CancelOutcome.PENDING:  # expired now, or no longer queued: its deadline no longer matters
                self.client.zrem(self.keys.deadlines, rid)
            outcomes[rid] = outcome
        return outcomes
