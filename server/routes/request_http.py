"""The HTTP edges the queue and run routes share: request parameters parsed into what
``RequestService`` takes, and a completed request turned into its HTTP answer."""

from __future__ import annotations

import math

import anyio
from fastapi.responses import JSONResponse

from core.requests.records import RequestRecord
from core.webhooks.targets import WebhookTargetError, check_webhook_url
from server.error_handlers import error_response, field_error


def parse_start_timeout(value: str | None) -> float | None:
    """``x-fal-request-timeout``: seconds a request may wait to start (None: no deadline)."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
    except ValueError:
        raise field_error(
            ("header", "x-fal-request-timeout"), "Input should be a number of seconds", "float_parsing"
        ) from None
    return seconds if seconds > 0 else None


async def checked_webhook_url(url: str | None, allow_private: bool) -> str | None:
    """The ``fal_webhook`` URL when this deployment may send to it (422 naming it otherwise)."""
    if not url:
        return None
    try:
        await anyio.to_thread.run_sync(check_webhook_url, url, allow_private)
    except WebhookTargetError as exc:
        raise field_error(("query", "fal_webhook"), str(exc), "value_error") from None
    return url


def result_response(record: RequestRecord) -> JSONResponse:
    """A COMPLETED request's answer: its output itself, or its stored error as fal renders it (the
    route has named the request: ``x-fal-request-id`` is added on the way out)."""
    if record.error is not None:
        return error_response(record.error, record.request_id)
    return JSONResponse(record.result)
