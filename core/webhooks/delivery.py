"""Webhook requests (``fal_webhook``): fal's body shape and one signed delivery attempt.

Delivery never changes a request's outcome. Which webhooks are due, the retries and their backoff
live in the Redis outbox (``core.webhooks.outbox``); running many attempts at once is the
dispatcher's (``core.webhooks.dispatcher``).

An attempt is bounded as a whole, not per read: ``webhook_timeout_s`` covers the DNS lookup, the
connection, sending and the response's status line and headers, so a receiver that drips one byte
at a time is cut off at the deadline. The body of a 2xx answer is never read (the status is the
answer), that of another answer at most ``ERROR_BODY_MAX_BYTES`` (for the log line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx

from core.protocol import WebhookBody
from core.requests.records import RequestRecord
from core.settings import Settings
from core.webhooks.signing import WebhookSigner
from core.webhooks.targets import WebhookTarget, WebhookTargetError, webhook_targets

logger = logging.getLogger(__name__)

ERROR_BODY_MAX_BYTES = 2048  # of a non-2xx answer, read for the log line
LOGGED_BODY_CHARS = 200
RESOLVER_THREADS = 16  # DNS lookups at once, per process


def webhook_body(record: RequestRecord) -> dict[str, Any]:
    """fal's webhook body for a COMPLETED record: OK with the output, or ERROR with the error body."""
    if record.error is None:
        body = WebhookBody(
            request_id=record.request_id,
            gateway_request_id=record.gateway_request_id,
            status="OK",
            payload=record.result,
        )
    else:
        body = WebhookBody(
            request_id=record.request_id,
            gateway_request_id=record.gateway_request_id,
            status="ERROR",
            error=f"Invalid status code: {record.error.status_code}",
            payload=record.error.body,
        )
    return body.model_dump(mode="json")


class WebhookSender:
    """One signed delivery attempt of one body to one URL, within ``webhook_timeout_s`` in all; success is
    any 2xx. Retries are the outbox's.

    ``signer`` returns the deployment's signer; it is called on the first delivery (not at start-up,
    so that building a sender needs no Redis) and kept. Each attempt opens its own connection and
    closes it (receivers differ from one webhook to the next; nothing is pooled across event loops).
    """

    def __init__(self, settings: Settings, signer: Callable[[], WebhookSigner]) -> None:
        self.settings = settings
        self._signer_source = signer
        self._signer: WebhookSigner | None = None
        self._tls = httpx.create_ssl_context()  # built once: loading the CA bundle per attempt costs ~10 ms
        # DNS lookups off the event loop, on threads of their own: one that outlives its attempt is
        # abandoned, and cannot hold the threads the outbox's Redis calls run on
        self._resolver: ThreadPoolExecutor | None = None

    @property
    def signer(self) -> WebhookSigner:
        if self._signer is None:
            self._signer = self._signer_source()
        return self._signer

    def backoff_s(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based): exponential, capped, with ±25 % jitter."""
        base = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), self.settings.webhook_backoff_max_s)
        return float(base * random.uniform(0.75, 1.25))

    async def send(self, url: str, body: dict[str, Any], request_id: str, user_id: str, attempt: int = 1) -> bool:
        """Whether the receiver accepted it, within the attempt's deadline. Never raises for network or
        HTTP errors, nor for the deadline.

        The URL is checked again here (``core.webhooks.targets``): a host may resolve elsewhere now
        than at submit; the POST goes to an address that passed the check.
        """
        deadline_s = self.settings.webhook_timeout_s
        try:
            with anyio.fail_after(deadline_s):
                return await self._send(url, body, request_id, user_id, attempt)
        except TimeoutError:
            logger.warning(
                "webhook timed out request_id=%s attempt=%d: no answer within %.1fs", request_id, attempt, deadline_s
            )
            return False

    async def _send(self, url: str, body: dict[str, Any], request_id: str, user_id: str, attempt: int) -> bool:
        try:
            targets = await self._resolve(url)
        except WebhookTargetError as exc:
            logger.warning("webhook refused request_id=%s attempt=%d: %s", request_id, attempt, exc)
            return False
        content = json.dumps(body).encode()
        if self._signer is None:  # the first attempt of this process reads (or creates) the key in Redis
            await anyio.to_thread.run_sync(lambda: self.signer)
        headers = {"Content-Type": "application/json"}
        headers.update(self.signer.headers(request_id, user_id, str(int(time.time())), content))
        # never follow a redirect: the receiver could point it at an address the target check refuses
        async with httpx.AsyncClient(
            verify=self._tls, timeout=self.settings.webhook_timeout_s, follow_redirects=False
        ) as client:
            for target in targets:  # the host's addresses in turn, until one connects
                try:
                    return await self._post(client, target, content, headers, request_id, attempt)
                except httpx.ConnectError as exc:
                    logger.warning("webhook failed request_id=%s attempt=%d: %s", request_id, attempt, exc)
                except httpx.HTTPError as exc:
                    logger.warning("webhook failed request_id=%s attempt=%d: %s", request_id, attempt, exc)
                    return False
        return False

    async def _resolve(self, url: str) -> list[WebhookTarget]:
        """``webhook_targets`` off the event loop (``getaddrinfo`` blocks); abandoned at the deadline."""
        if self._resolver is None:
            self._resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhook-dns")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._resolver, webhook_targets, url, self.settings.webhook_allow_private)

    async def _post(
        self,
        client: httpx.AsyncClient,
        target: WebhookTarget,
        content: bytes,
        headers: dict[str, str],
        request_id: str,
        attempt: int,
    ) -> bool:
        request_headers = {**headers, **target.headers}
        async with client.stream(
            "POST", target.url, content=content, headers=request_headers, extensions=target.extensions
        ) as response:
            if 200 <= response.status_code < 300:  # the answer is the status: the body is left unread
                logger.info("webhook delivered request_id=%s attempt=%d", request_id, attempt)
                return True
            snippet = await read_at_most(response, ERROR_BODY_MAX_BYTES)
        logger.warning(
            "webhook got HTTP %d request_id=%s attempt=%d: %r",
            response.status_code,
            request_id,
            attempt,
            snippet[:LOGGED_BODY_CHARS].decode("utf-8", "replace"),
        )
        return False

    def close(self) -> None:
        """Let the DNS threads go (a lookup still running finishes on its own)."""
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)
            self._resolver = None


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of a streamed response's body; the rest is never read (the connection closes)."""
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk[: limit - len(received)]
        if len(received) >= limit:
            break
    return bytes(received)
