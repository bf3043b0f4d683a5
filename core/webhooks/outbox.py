"""Durable webhook delivery: an outbox in Redis that the API and every worker drain.

A request that completes with a ``fal_webhook`` enters the outbox (a sorted set of request ids by
next attempt time) in the same Lua step that completes it (``core.requests.scripts``). Dispatchers
(``core.webhooks.dispatcher``, a thread in each API and worker process) lease due entries and make
one attempt for each, many at once. A lease lasts one attempt's deadline plus a margin, so a webhook
survives the death of the process that completed its request or of the one delivering it, and Redis
restarts (append-only file); it is delivered at least once, retried with exponential backoff up to
``webhook_max_attempts``, and its state is kept on the record (``webhook_status``: pending,
delivered or failed; ``webhook_attempts``).

The Redis side here is blocking (``redis.Redis``): :meth:`WebhookOutbox.attempt`, the async part that
sends, runs each Redis call on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import redis

from core.protocol import RequestStatus
from core.requests import scripts
from core.requests.records import Keys, RequestRecord, as_str, decoded
from core.settings import Settings
from core.webhooks.delivery import WebhookSender, webhook_body
from core.webhooks.receivers import ReceiverSlots, SlotOutcome, receiver_of
from core.webhooks.signing import WebhookSigner

logger = logging.getLogger(__name__)

LEASE_MARGIN_S = 5.0
RECEIVER_BUSY_RETRY_S = 0.5  # a webhook whose receiver stayed at its cap is looked at again this much later


@dataclass(frozen=True)
class DueWebhook:
    """A leased webhook, read from its record: where it goes and what it says."""

    request_id: str
    url: str
    body: dict[str, Any]
    owner: str


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
        """How long one attempt may take before another dispatcher may try again: its deadline, plus a margin
        for the Redis calls around it."""
        return self.settings.webhook_timeout_s + LEASE_MARGIN_S

    def pending(self) -> list[str]:
        return [as_str(rid) for rid in self.client.zrange(self.keys.webhooks, 0, -1)]

    # --- blocking Redis steps of an attempt ---------------------------------------------------------

    def lease_due(self, limit: int) -> list[str]:
        """Lease up to ``limit`` due webhooks (oldest first) to this process for one attempt each."""
        now = self._clock()
        due = self.client.zrangebyscore(self.keys.webhooks, "-inf", repr(now), start=0, num=limit)
        leased = []
        for rid in map(as_str, due):
            call = scripts.lease_webhook_call(self.keys, request_id=rid, now=now, lease_until=now + self.lease_s)
            if self._lease(keys=call.keys, args=call.args):
                leased.append(rid)
        return leased

    def read_due(self, rid: str) -> DueWebhook | None:
        """The leased webhook's URL and body; ``None`` (and out of the outbox) when there is nothing to send."""
        data = decoded(self.client.hgetall(self.keys.record(rid)))
        if not data or not data.get("webhook") or data.get("status") != RequestStatus.COMPLETED.value:
            self.client.zrem(self.keys.webhooks, rid)  # expired, or nothing to send
            return None
        record = RequestRecord.from_hash(rid, data)
        return DueWebhook(rid, data["webhook"], webhook_body(record), record.owner)

    def count_attempt(self, rid: str) -> int:
        return int(self.client.hincrby(self.keys.record(rid), "webhook_attempts", 1))

    def postpone(self, rid: str, delay_s: float) -> None:
        """Give a leased webhook back, due again in ``delay_s`` (no attempt was made)."""
        self.client.zadd(self.keys.webhooks, {rid: self._clock() + delay_s}, xx=True)

    def record_outcome(self, rid: str, attempt: int, delivered: bool) -> None:
        key = self.keys.record(rid)
        if delivered:
            self.client.hset(key, "webhook_status", "delivered")
            self.client.zrem(self.keys.webhooks, rid)
        elif attempt >= max(self.settings.webhook_max_attempts, 1):
            logger.error("webhook gave up request_id=%s after %d attempts", rid, attempt)
            self.client.hset(key, "webhook_status", "failed")
            self.client.zrem(self.keys.webhooks, rid)
        else:
            retry_at = self._clock() + self.sender.backoff_s(attempt)
            self.client.zadd(self.keys.webhooks, {rid: retry_at})

    # --- one attempt --------------------------------------------------------------------------------

    async def attempt(self, rid: str, slots: ReceiverSlots) -> None:
        """One attempt for the leased webhook ``rid`` once its receiver has a free slot in ``slots``; if
        none frees in time, it is postponed (no attempt counted).

        Cancelled (the dispatcher stopping), the webhook is made due again at once, for any
        dispatcher; the receiver may have got it already (at-least-once).
        """
        due = await anyio.to_thread.run_sync(self.read_due, rid)
        if due is None:
            return
        receiver = receiver_of(due.url)
        try:
            taken = await slots.take(receiver)
        except asyncio.CancelledError:
            self._give_back(rid)
            raise
        if taken is not SlotOutcome.TAKEN:
            await anyio.to_thread.run_sync(self.postpone, rid, RECEIVER_BUSY_RETRY_S)
            return
        try:
            number = await anyio.to_thread.run_sync(self.count_attempt, rid)
            delivered = await self.sender.send(due.url, due.body, rid, due.owner, number)
            await anyio.to_thread.run_sync(self.record_outcome, rid, number, delivered)
        except asyncio.CancelledError:
            self._give_back(rid)
            raise
        finally:
            slots.give_back(receiver)

    def _give_back(self, rid: str) -> None:
        try:
            self.postpone(rid, 0.0)
        except redis.RedisError:  # its lease runs out instead
            logger.warning("webhook request_id=%s stays leased until its lease ends", rid)

    def deliver_due(self, limit: int = 16) -> int:
        """Lease and attempt up to ``limit`` due webhooks at once, and wait for them; how many were leased.

        The dispatcher does this continuously; this one-shot form is for scripts and tests.
        """
        leased = self.lease_due(limit)
        if leased:
            slots = ReceiverSlots(self.settings.webhook_concurrency_per_host)

            async def attempt_all() -> None:
                async with anyio.create_task_group() as tasks:
                    for rid in leased:
                        tasks.start_soon(self.attempt, rid, slots)

            asyncio.run(attempt_all())
        return len(leased)


def build_outbox(client: redis.Redis, settings: Settings) -> WebhookOutbox:
    """The outbox of a process, its sender signing with the deployment's shared key."""
    keys = Keys(settings.key_prefix)
    sender = WebhookSender(settings, signer=lambda: WebhookSigner.shared(client, keys))
    return WebhookOutbox(client, settings, sender)
