"""Submitting requests and the API's view of them: create, read, logs, queue position, cancel.

The record is written in the same atomic step as the RQ job that carries the request
(``core.requests.rq_integration``), sent from the event loop in one round trip, before submit
answers. Transitions are Lua scripts (``core.requests.scripts``), so the API and any number of
workers can race safely. ``RequestStore`` is the async face used by the API; workers use
``core.requests.worker_store.WorkerRequestStore``.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import anyio
import redis
import redis.asyncio as aioredis

from core.errors import QueueFullError, RequestNotFoundError
from core.protocol import RequestStatus
from core.requests import scripts
from core.requests.records import Keys, NewRequest, RequestRecord, StatusView, as_str, decoded
from core.requests.rq_integration import Command, push_index, record_enqueue, recorded_commands
from core.requests.scripts import CancelMode, CancelOutcome
from core.settings import Settings


class QueueHead(NamedTuple):
    """What positions are counted from (``RequestStore.queue_heads``): a queue list's length, its head's
    id and the ticket of the entry after the head (None: empty, or without tickets)."""

    length: int
    head: str | None
    second_ticket: int | None


def queue_name_of(settings: Settings, priority: str) -> str:
    return settings.queue_low if priority == "low" else settings.queue_normal


def submit_commands(conn: redis.Redis, settings: Settings, new: NewRequest) -> list[Command]:
    """Every write of a submit, in order, for one MULTI: the record, the status set, the counter, and
    RQ's own writes for the job that carries the request.

    RQ has no async API, so its writes are recorded on a sync pipeline that is never executed (no
    I/O: RQ's one-time server version probe aside) and sent with ours, from the event loop.
    """
    keys = Keys(settings.key_prefix)
    now = time.time()
    queue_name = queue_name_of(settings, new.priority)
    record: dict[Any, str | int] = {  # Any keys: redis-py's mapping type is invariant in them
        "status": RequestStatus.IN_QUEUE.value,
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
    with conn.pipeline(transaction=True) as recorder:
        recorder.multi()  # RQ expects an explicit MULTI on a caller's pipeline
        recorder.hset(keys.record(new.request_id), mapping=record)
        recorder.sadd(keys.queued, new.request_id)
        recorder.hincrby(keys.stats, "submitted", 1)
        if new.start_timeout_s:
            recorder.zadd(keys.deadlines, {new.request_id: now + new.start_timeout_s})
        record_enqueue(
            recorder,
            conn,
            queue_name,
            new.request_id,
            timeout_s=settings.job_timeout_s,
            failure_ttl_s=settings.record_ttl_s,
        )
        recorder.incr(keys.queue_tickets(queue_name))  # its place in line, stored on the record (positions in O(1))
        recorder.execute_command(scripts.WITH_PREVIOUS_REPLY, "HSET", keys.record(new.request_id), "ticket")
        recorder.publish(keys.queue_grew, queue_name)  # after the push: a worker it wakes finds the request
        return recorded_commands(recorder)


def create_request(conn: redis.Redis, settings: Settings, new: NewRequest) -> None:
    """``submit_commands`` in one atomic script call on a sync connection (tests and tools; the API
    uses ``RequestStore.create``)."""
    with conn.pipeline(transaction=False) as pipe:
        add_request(pipe, conn, settings, new)
        pipe.execute()


def add_request(pipe: redis.client.Pipeline, conn: redis.Redis, settings: Settings, new: NewRequest) -> None:
    """Queue the writes of one new request on ``pipe`` as one atomic script call, as the API sends them
    (bulk fills: benchmarks, tests)."""
    commands = submit_commands(conn, settings, new)
    call = scripts.apply_batch_call([args for args, _ in commands], keys=touched_keys(commands))
    pipe.eval(scripts.APPLY_BATCH, len(call.keys), *call.keys, *call.args)


def touched_keys(commands: list[Command]) -> list[str]:
    """The keys a submit's commands write: each one's first argument (none of them takes two keys),
    except a PUBLISH's (a channel); a command led by ``WITH_PREVIOUS_REPLY``, its second."""
    for args, options in commands:
        if options:
            raise RuntimeError(f"unexpected options on a submit command: {args[0]} {options}")
    named = [args[1:] if args[0] == scripts.WITH_PREVIOUS_REPLY else args for args, _ in commands]
    return list(dict.fromkeys(str(args[1]) for args in named if str(args[0]).upper() != "PUBLISH"))


class RequestStore:
    """Async access to request records for the API."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._cancel = client.register_script(scripts.CANCEL_QUEUED)
        self._status_view = client.register_script(scripts.STATUS_VIEW)
        self._apply_batch = client.register_script(scripts.APPLY_BATCH)
        self._submit = client.register_script(scripts.SUBMIT)
        self._queue_heads = client.register_script(scripts.QUEUE_HEADS)
        self._rq_probed = False

    async def create(self, new: NewRequest, rq_connection: redis.Redis, *, max_queue_length: int | None = None) -> int:
        """Store and enqueue the request in one atomic script call from the event loop; its queue position.

        Nothing is written, and ``QueueFullError`` raised, when ``max_queue_length`` requests already
        wait, or the owner already has ``max_queued_per_key`` waiting (checked in the same script call).

        ``rq_connection`` (sync) only lets RQ build its writes: nothing is sent on it but RQ's
        one-time server version probe (cached on the connection), made in a thread on the first call.
        """
        if self._rq_probed:
            commands = submit_commands(rq_connection, self.settings, new)
        else:
            commands = await anyio.to_thread.run_sync(submit_commands, rq_connection, self.settings, new)
            self._rq_probed = True
        queue_name = queue_name_of(self.settings, new.priority)
        normal_list = Keys.rq_queue(self.settings.queue_normal)
        batch = [args for args, _ in commands] + [("LLEN", normal_list)]
        call = scripts.submit_call(
            self.keys,
            batch,
            touched=[*touched_keys(commands), normal_list],
            owner=new.owner,
            request_id=new.request_id,
            max_queue_length=max_queue_length,
            max_queued_per_key=self.settings.max_queued_per_key,
        )
        replies = await self._submit(keys=call.keys, args=call.args)
        if not isinstance(replies, list):
            retry = {"Retry-After": str(self.settings.queue_full_retry_after_s)}
            refusal = scripts.SubmitRefusal(as_str(replies))
            if refusal is scripts.SubmitRefusal.STORE_FULL:
                raise redis.exceptions.OutOfMemoryError("redis holds its submit share of maxmemory")
            if refusal is scripts.SubmitRefusal.KEY_FULL:
                raise QueueFullError(
                    f"Too many requests waiting for this key ({self.settings.max_queued_per_key})", headers=retry
                )
            raise QueueFullError(f"Queue is full ({max_queue_length} requests waiting)", headers=retry)
        position = int(replies[push_index(commands, queue_name)]) - 1
        if queue_name != self.settings.queue_normal:
            position += int(replies[-1])
        return position

    async def get(self, rid: str, owner: str | None = None) -> RequestRecord:
        """The record; unknown ids and other owners' ids are both ``RequestNotFoundError``."""
        data = await self.client.hgetall(self.keys.record(rid))
        if not data or "status" not in data:
            raise RequestNotFoundError()
        record = RequestRecord.from_hash(rid, data)
        if owner is not None and record.owner != owner:
            raise RequestNotFoundError()
        if record.status is RequestStatus.IN_QUEUE and record.deadline and time.time() > record.deadline:
            await self.expire_overdue(rid)
            return await self.get(rid, owner)
        return record

    async def status_view(self, rid: str, owner: str | None = None, logs_from: int | None = None) -> StatusView:
        """What a status call shows, in one round trip; logs from ``logs_from`` (None: no logs).

        Unknown ids and other owners' ids are both ``RequestNotFoundError``; a queued request past its
        start deadline is completed (504) first, as ``get`` does.
        """
        call = scripts.status_view_call(
            self.keys, request_id=rid, normal_queue=self.settings.queue_normal, logs_from=logs_from
        )
        reply = await self._status_view(keys=call.keys, args=call.args)
        if not reply:
            raise RequestNotFoundError()
        view = StatusView.from_reply(rid, reply, logs_from is not None)
        if owner is not None and view.owner != owner:
            raise RequestNotFoundError()
        if view.is_overdue:
            await self.expire_overdue(rid)
            return await self.status_view(rid, owner, logs_from)
        return view

    async def logs(self, rid: str, start: int = 0) -> list[dict[str, Any]]:
        raw = await self.client.lrange(self.keys.logs(rid), start, -1)
        return [json.loads(item) for item in raw]

    async def queue_heads(self) -> dict[str, QueueHead]:
        """Per queue (serving order): its length, head and second entry's ticket, in one O(1) read
        (``QUEUE_HEADS``)."""
        names = (self.settings.queue_normal, self.settings.queue_low)
        call = scripts.queue_heads_call(self.keys, queues=names)
        reply = await self._queue_heads(keys=call.keys, args=call.args)
        heads = {}
        for i, name in enumerate(names):
            length, head, second = reply[3 * i : 3 * i + 3]
            heads[name] = QueueHead(int(length), as_str(head) if head else None, int(second) if second else None)
        return heads

    def position_from_heads(self, view: StatusView, heads: dict[str, QueueHead]) -> int | None:
        """``view``'s queue position from ``queue_heads`` (as ``status_view`` counts it), or None when it
        is not in its list (any more) or has no ticket."""
        if view.ticket is None or view.queue not in heads:
            return None
        head = heads[view.queue]
        if head.head == view.request_id:
            found: int | None = 0
        elif head.second_ticket is None:
            return None
        else:
            found = scripts.queue_position_from_tickets(view.ticket, head.second_ticket, head.length)
        if found is None or view.queue == self.settings.queue_normal:
            return found
        return found + heads[self.settings.queue_normal].length

    async def queue_depth(self) -> dict[str, int]:
        names = (self.settings.queue_normal, self.settings.queue_low)
        return {name: int(await self.client.llen(Keys.rq_queue(name))) for name in names}

    async def cancel(self, rid: str) -> CancelOutcome:
        """``CANCELLED`` (was queued, now COMPLETED), ``REQUESTED`` (running), ``COMPLETED``, ``MISSING``."""
        return await self._cancel_queued(rid, CancelMode.CANCEL)

    async def expire_overdue(self, rid: str) -> CancelOutcome:
        """Complete a queued request whose start deadline passed with 504 request_timeout."""
        return await self._cancel_queued(rid, CancelMode.EXPIRE)

    async def _cancel_queued(self, rid: str, mode: CancelMode) -> CancelOutcome:
        call = scripts.cancel_queued_call(
            self.keys, request_id=rid, mode=mode, now=time.time(), ttl_s=self.settings.record_ttl_s
        )
        return CancelOutcome(as_str(await self._cancel(keys=call.keys, args=call.args)))

    async def stats(self) -> dict[str, str]:
        return decoded(await self.client.hgetall(self.keys.stats))

    async def status_counts(self) -> dict[str, int]:
        return {
            RequestStatus.IN_QUEUE.value: int(await self.client.scard(self.keys.queued)),
            RequestStatus.IN_PROGRESS.value: int(await self.client.scard(self.keys.active)),
        }

    async def webhook_backlog(self) -> int:
        return int(await self.client.zcard(self.keys.webhooks))

    async def alive_workers(self) -> int:
        """Workers that beat within a lease; also forgets long-dead ones (killed workers never unregister)."""
        now = time.time()
        await self.client.zremrangebyscore(self.keys.workers, "-inf", now - self.settings.worker_forget_after_s)
        return int(await self.client.zcount(self.keys.workers, now - self.settings.lease_ttl_s, "+inf"))

    async def live_worker_info(self) -> list[dict[str, Any]]:
        """``[{"name", "device", "model": {...}}]`` for each worker alive now, by name."""
        since = time.time() - self.settings.lease_ttl_s
        names = sorted(as_str(n) for n in await self.client.zrangebyscore(self.keys.workers, since, "+inf"))
        if not names:
            return []
        infos = await self.client.mget([self.keys.worker_info(name) for name in names])
        return [{"name": name, **(json.loads(info) if info else {})} for name, info in zip(names, infos, strict=True)]
