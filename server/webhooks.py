"""Webhook delivery (``fal_webhook``): fal's body shape, retries with exponential backoff.

Delivery never changes a request's outcome: it runs after ``complete`` and its result is only
logged and recorded. Blocking (httpx sync): workers run it on a background thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from server.protocol import WebhookBody
from server.records import RequestRecord
from server.settings import Settings

logger = logging.getLogger(__name__)

DeliveryCallback = Callable[[str, bool, int], None]


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
    """Delivers one body to one URL with retries; success is any 2xx."""

    def __init__(
        self,
        settings: Settings,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._transport = transport

    def backoff_s(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1-based): exponential, capped, with ±25 % jitter."""
        base = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), self.settings.webhook_backoff_max_s)
        return float(base * random.uniform(0.75, 1.25))

    def deliver(self, url: str, body: dict[str, Any], request_id: str) -> tuple[bool, int]:
        """(delivered, attempts used). Never raises for network or HTTP errors."""
        content = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-Timestamp": str(int(time.time())),
        }
        attempts = max(self.settings.webhook_max_attempts, 1)
        with httpx.Client(timeout=self.settings.webhook_timeout_s, transport=self._transport) as client:
            for attempt in range(1, attempts + 1):
                try:
                    response = client.post(url, content=content, headers=headers)
                    if 200 <= response.status_code < 300:
                        logger.info("webhook delivered request_id=%s attempt=%d", request_id, attempt)
                        return True, attempt
                    logger.warning(
                        "webhook got HTTP %d request_id=%s attempt=%d",
                        response.status_code,
                        request_id,
                        attempt,
                    )
                except httpx.HTTPError as exc:
                    logger.warning("webhook failed request_id=%s attempt=%d: %s", request_id, attempt, exc)
                if attempt < attempts:
                    self._sleep(self.backoff_s(attempt))
        logger.error("webhook gave up request_id=%s after %d attempts", request_id, attempts)
        return False, attempts

    def deliver_in_background(
        self, url: str, body: dict[str, Any], request_id: str, on_done: DeliveryCallback | None = None
    ) -> threading.Thread:
        def run() -> None:
            delivered, attempts = self.deliver(url, body, request_id)
            if on_done is not None:
                try:
                    on_done(request_id, delivered, attempts)
                except Exception:  # a failing record of the outcome must not kill the thread noisily
                    logger.exception("recording webhook outcome failed request_id=%s", request_id)

        thread = threading.Thread(target=run, name=f"webhook-{request_id}", daemon=True)
        thread.start()
        return thread
