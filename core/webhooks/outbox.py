"""Durable webhook delivery: an outbox in Redis that the API and every worker drain.

A request that completes with a ``fal_webhook`` enters the outbox (a sorted set of request ids by
next attempt time) in the same Lua step that completes it (``core.requests.scripts``). Dispatchers, a
thread in each API and worker process, take due entries one attempt at a time under a lease. So a
webhook survives the death of the process that completed its request or of the one delivering it,
and Redis restarts (append-only file); it is delivered at least once, retried with exponential
backoff up to ``webhook_max_attempts``, and its state is kept on the record
(``webhook_status``: pending, delivered or failed; ``webhook_attempts``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from core.protocol import RequestStatus
from core.requests import scripts
from core.requests.records import Keys, RequestRecord, as_str, decoded
from core.settings import Settings
from core.webhooks.delivery import WebhookSender, webhook_body
from core.webhooks.signing import WebhookSigner

logger = logging.getLogger(__name__)

LEASE_MARGIN_S = 5.0


class WebhookOutbox:
    """Delivers the due webhooks of one deployment (one key prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        sender: WebhookSender,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.sender = sender
        self.keys = Keys(settings.key_prefix)
        self._clock = clock
        self._lease = client.register_script(scripts.LEASE_WEBHOOK)

    @property
    def lease_s(self) -> float:
        """How long one attempt may take before another dispatcher may try again."""
        return self.settings.webhook_timeout_s + LEASE_MARGIN_S

    def pending(self) -> list[str]:
        return [as_str(rid) for rid in self.client.zrange(self.keys.webhooks, 0, -1)]

    def deliver_due(self, limit: int = 16) -> int:
        """Make one attempt for each of up to ``limit`` due webhooks; returns how many were attempted."""
        now = self._clock()
        due = self.client.zrangebyscore(self.keys.webhooks, "-inf", repr(now), start=0, num=limit)
        attempted = 0
        for rid in map(as_str, due):
            call = scripts.lease_webhook_call(self.keys, request_id=rid, now=now, lease_until=now + self.lease_s)
            taken = self._lease(keys=call.keys, args=call.args)
            if taken:
                self._attempt(rid)
                attempted += 1
        return attempted

    def _attempt(self, rid: str) -> None:
        key = self.keys.record(rid)
        data = decoded(self.client.hgetall(key))
        if not data or not data.get("webhook") or data.get("status") != RequestStatus.COMPLETED.value:
            self.client.zrem(self.keys.webhooks, rid)  # expired, or nothing to send
            return
        record = RequestRecord.from_hash(rid, data)
        attempt = int(self.client.hincrby(key, "webhook_attempts", 1))
        if self.sender.send(data["webhook"], webhook_body(record), rid, record.owner, attempt):
            self.client.hset(key, "webhook_status", "delivered")
            self.client.zrem(self.keys.webhooks, rid)
        elif attempt >= max(self.settings.webhook_max_attempts, 1):
            logger.error("webhook gave up request_id=%s after %d attempts", rid, attempt)
            self.client.hset(key, "webhook_status", "failed")
            self.client.zrem(self.keys.webhooks, rid)
        else:
            retry_at = self._clock() + self.sender.backoff_s(attempt)
            self.client.zadd(self.keys.webhooks, {rid: retry_at})


class WebhookDispatcher(threading.Thread):
    """Background thread draining the outbox: attempts due webhooks, idles ``interval_s`` when none."""

    def __init__(self, outbox: WebhookOutbox, name: str = "webhooks") -> None:
        super().__init__(name=name, daemon=True)
        self.outbox = outbox
        self.interval_s = outbox.settings.webhook_poll_interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            attempted = 0
            try:
                attempted = self.outbox.deliver_due()
            except redis.RedisError as exc:
                logger.warning("webhook outbox unavailable: %s", exc)
            except Exception:  # the thread must survive anything one delivery throws
                logger.exception("webhook dispatcher error")
            if not attempted:
                self.stopped.wait(self.interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout_s)


def build_outbox(client: redis.Redis, settings: Settings) -> WebhookOutbox:
    """The outbox of a process, its sender signing with the deployment's shared key."""
    keys = Keys(settings.key_prefix)
    sender = WebhookSender(settings, signer=lambda: WebhookSigner.shared(client, keys))
    return WebhookOutbox(client, settings, sender)
