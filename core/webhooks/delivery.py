"""Webhook requests (``fal_webhook``): fal's body shape and one signed delivery attempt.

Delivery never changes a request's outcome. Which webhooks are due, the retries and their backoff
live in the Redis outbox (``core.webhooks.outbox``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from core.protocol import WebhookBody
from core.requests.records import RequestRecord
from core.settings import Settings
from core.webhooks.signing import WebhookSigner
from core.webhooks.targets import WebhookTargetError, webhook_targets

logger = logging.getLogger(__name__)


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
    """One signed delivery attempt of one body to one URL; success is any 2xx. Retries are the outbox's.

    ``signer`` returns the deployment's signer; it is called on the first delivery (not at start-up,
    so that building a sender needs no Redis) and kept.
    """

    def __init__(
        self,
        settings: Settings,
        signer: Callable[[], WebhookSigner],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._signer_source = signer
        self._signer: WebhookSigner | None = None
        # never follow a redirect: the receiver could point it at an address the target check refuses
        self._client = httpx.Client(timeout=settings.webhook_timeout_s, transport=transport, follow_redirects=False)

    @property
    def signer(self) -> WebhookSigner:
        if self._signer is None:
            self._signer = self._signer_source()
        return self._signer

    def backoff_s(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based): exponential, capped, with ±25 % jitter."""
        base = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), self.settings.webhook_backoff_max_s)
        return float(base * random.uniform(0.75, 1.25))

    def send(self, url: str, body: dict[str, Any], request_id: str, user_id: str, attempt: int = 1) -> bool:
        """Whether the receiver accepted it. Never raises for network or HTTP errors.

        The URL is checked again here (``core.webhooks.targets``): a host may resolve elsewhere now
        than at submit; the POST goes to an address that passed the check.
        """
        try:
            targets = webhook_targets(url, self.settings.webhook_allow_private)
        except WebhookTargetError as exc:
            logger.warning("webhook refused request_id=%s attempt=%d: %s", request_id, attempt, exc)
            return False
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        headers.update(self.signer.headers(request_id, user_id, str(int(time.time())), content))
        response = None
        for target in targets:  # the host's addresses in turn, until one connects
            try:
                response = self._client.post(
                    target.url, content=content, headers={**headers, **target.headers}, extensions=target.extensions
                )
                break
            except httpx.ConnectError as exc:
                logger.warning("webhook failed request_id=%s attempt=%d: %s", request_id, attempt, exc)
            except httpx.HTTPError as exc:
                logger.warning("webhook failed request_id=%s attempt=%d: %s", request_id, attempt, exc)
                return False
        if response is None:
            return False
        if 200 <= response.status_code < 300:
            logger.info("webhook delivered request_id=%s attempt=%d", request_id, attempt)
            return True
        logger.warning("webhook got HTTP %d request_id=%s attempt=%d", response.status_code, request_id, attempt)
        return False

    def close(self) -> None:
        self._client.close()
