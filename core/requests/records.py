"""The request record in Redis: key names, the decoded record, what submit stores.

A request is a hash ``<prefix>:req:<id>`` (status, owner, input, result or error, timestamps) plus a
list of fal log entries ``<prefix>:req:<id>:logs``. Its transitions are Lua scripts
(``core.requests.scripts``) run through ``core.requests.api_store.RequestStore`` (API) and
``core.requests.worker_store.WorkerRequestStore`` (workers).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ClientCancelledError, StoredError
from core.protocol import RequestStatus
from core.requests.rq_integration import queue_key

_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_request_id(value: object) -> bool:
    """Whether ``value`` is a request id as submit issues them: a canonical lower-case UUID.

    Anything else names no request: the API answers 404 without asking Redis, and never echoes it.
    """
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def as_str(value: object) -> str:
    """A Redis reply as text (clients here decode responses; redis-py's types allow bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded(data: Mapping[Any, Any]) -> dict[str, str]:
    return {as_str(k): as_str(v) for k, v in data.items()}


OUTCOME_OK = "ok"
INFERENCE_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)  # seconds, for /metrics


LOGS_CHANGED = "log"  # what a worker publishes on ``Keys.changed`` when it only appended log entries


def owner_tag(owner: str) -> str:
    """A key's owner id as it appears in Redis key names: bounded length whatever the id (SHA-1, as
    the scripts compute it with ``redis.sha1hex``; a name, not a secret)."""
    return hashlib.sha1(owner.encode(), usedforsecurity=False).hexdigest()


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

    # Pub/sub channels (status streams wait on them instead of polling). The scripts derive them from
    # the keys they get: ``<record>:changed`` and ``<queued>:moved``.

    def changed(self, rid: str) -> str:
        """Channel published on whenever the request's record or logs change (``LOGS_CHANGED`` when
        only its logs grew, the transition's word otherwise)."""
        return f"{self.prefix}:req:{rid}:changed"

    @property
    def queue_moved(self) -> str:
        """Channel published on when requests leave a queue or are put back at its front (positions change)."""
        return f"{self.prefix}:queued:moved"

    @property
    def queue_grew(self) -> str:
        """Channel published on (with the queue's name) when a request is submitted: idle workers wake."""
        return f"{self.prefix}:queued:grew"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:queued"

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def dequeued(self) -> str:
        """Requests a worker took off an RQ list and has not started yet: sorted set, id -> time taken.

        The recovery sweep reads only this index (never the queue) to find requests whose worker died
        between the two steps."""
        return f"{self.prefix}:dequeued"

    @property
    def deadlines(self) -> str:
        """Requests submitted with a start deadline (``x-fal-request-timeout``): sorted set, id -> deadline."""
        return f"{self.prefix}:deadlines"

    @property
    def webhook_signing_key(self) -> str:
        return f"{self.prefix}:webhook-signing-key"

    @property
    def webhooks(self) -> str:
        """Outbox of webhooks to deliver: sorted set of request ids by next attempt time."""
        return f"{self.prefix}:webhooks"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker_info(self, name: str) -> str:
        """What a live worker serves (device, model identity), refreshed with its heartbeat."""
        return f"{self.prefix}:worker-info:{name}"

    def owner_queued(self, owner: str) -> str:
        """Set of the requests one key submitted that may still be waiting (kept only while
        ``BITDANCE_MAX_QUEUED_PER_KEY`` is set; ids no longer IN_QUEUE are pruned when it is full)."""
        return f"{self.prefix}:owner:{owner_tag(owner)}:queued"

    def owner_deferred(self, owner: str) -> str:
        """List of one key's requests taken off the queue while the key ran its limit: they wait here,
        still IN_QUEUE, until one of the key's requests ends (``BITDANCE_MAX_RUNNING_PER_KEY``)."""
        return f"{self.prefix}:owner:{owner_tag(owner)}:deferred"

    @property
    def deferred_owners(self) -> str:
        """Set of the owner tags with requests waiting in ``owner_deferred``: the sweep releases them."""
        return f"{self.prefix}:deferred-owners"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep-lock"

    def upload(self, token: str) -> str:
        return f"{self.prefix}:upload:{token}"

    def queue_tickets(self, queue: str) -> str:
        """Counter of the requests ever submitted to ``queue``: each gets the next value as its ``ticket``
        (its place in line; a queue position is a difference of tickets, O(1) in the queue's length)."""
        return f"{self.prefix}:tickets:{queue}"

    @staticmethod
    def rq_queue(queue: str) -> str:
        """RQ's list of the ids waiting in ``queue`` (RQ's naming: ``core.requests.rq_integration``)."""
        return queue_key(queue)


@dataclass(frozen=True)
class RequestRecord:
    """One request as stored in Redis (decoded)."""

    request_id: str
    status: RequestStatus
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
    def from_hash(cls, rid: str, raw: Mapping[Any, Any]) -> RequestRecord:
        data = decoded(raw)

        def number(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value not in (None, "") else None

        return cls(
            request_id=rid,
            status=RequestStatus(data["status"]),
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
        """Expiry asked for with ``x-fal-object-lifecycle-preference``, if any (validated by the API)."""
        value = (self.lifecycle or {}).get("expiration_duration_seconds")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class StatusView:
    """What a status call shows of a request (``scripts.STATUS_VIEW``: one read, no input or result)."""

    request_id: str
    status: RequestStatus
    owner: str
    endpoint: str
    queue: str
    queue_position: int | None
    deadline: float | None
    error: StoredError | None
    inference_time: float | None
    logs: list[dict[str, Any]] | None
    ticket: int | None = None  # its place in its queue's line (``Keys.queue_tickets``); None: a record without one

    @classmethod
    def from_reply(cls, rid: str, reply: list[Any], with_logs: bool) -> StatusView:
        fields, position, logs = reply
        status, owner, endpoint, queue, deadline, error, inference_time, ticket = (
            as_str(f) if f is not None else None for f in fields
        )
        return cls(
            request_id=rid,
            status=RequestStatus(status or ""),
            owner=owner or "",
            endpoint=endpoint or "",
            queue=queue or "",
            queue_position=int(position) if int(position) >= 0 else None,
            deadline=float(deadline) if deadline else None,
            error=StoredError.from_dict(json.loads(error)) if error else None,
            inference_time=float(inference_time) if inference_time else None,
            logs=[json.loads(entry) for entry in logs] if with_logs else None,
            ticket=int(ticket) if ticket else None,
        )

    @property
    def is_overdue(self) -> bool:
        """Still queued after its start deadline (``x-fal-request-timeout``)."""
        return self.status is RequestStatus.IN_QUEUE and self.deadline is not None and time.time() > self.deadline


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
