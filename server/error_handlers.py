"""The one place that renders errors as fal does: ``error_response`` writes every error answer of the
API (``FalError`` subclasses, a request's stored error, validation errors as fal's 422, Redis
outages, anything else), for the exception handlers, the stored results of failed requests, and
the ASGI layers that answer before any route (``send_error``: body limit, proxy).

The handlers are registered on the app by ``server.app.create_app``; routes raise ``core.errors``
classes and never build error JSON.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from core.errors import REQUEST_ID_HEADER, FalError, ServiceUnavailableError, StoredError
from server.request_ids import response_request_id

logger = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
# What a 422 item may carry (fal's shape: loc, msg, type; ctx and input optional).
_VALIDATION_ITEM_KEYS = ("loc", "msg", "type", "ctx", "input")


def field_error(loc: Sequence[str | int], msg: str, kind: str) -> RequestValidationError:
    """A validation error in fal's 422 shape for an input the models do not cover (headers, query)."""
    return RequestValidationError([{"loc": list(loc), "msg": msg, "type": kind}])


MAX_ECHO_DEPTH = 8  # of a 422's echoed ``input``/``ctx``: deeper levels are elided
MAX_ECHO_CHARS = 1024  # of one echoed string: the rest is elided (a 40 KB prompt is not sent back whole)
ELIDED = "..."


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` made encodable as strict UTF-8 JSON: non-finite floats become their names
    (``"NaN"``, ``"Infinity"``), lone surrogates and undecodable bytes become U+FFFD, and containers
    nested deeper than ``MAX_ECHO_DEPTH`` become ``"..."`` (so the recursion is bounded whatever the
    input; ``server.json_bodies`` bounds bodies too); strings are cut at ``MAX_ECHO_CHARS``."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        text = _SURROGATE.sub("\ufffd", value)
        return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + ELIDED
    if isinstance(value, bytes):
        return json_safe(value.decode("utf-8", "replace"), depth)
    if isinstance(value, dict | list | tuple | set | frozenset) and depth >= MAX_ECHO_DEPTH:
        return ELIDED
    if isinstance(value, dict):
        return {str(json_safe(k, depth + 1)): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item, depth + 1) for item in value]
    if value is None or isinstance(value, bool | int):
        return value
    return json_safe(str(value), depth)


def validation_items(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic/FastAPI error items reduced to fal's keys, every value JSON-safe."""
    return [json_safe({key: error[key] for key in _VALIDATION_ITEM_KEYS if key in error}) for error in errors]


def error_response(error: FalError | StoredError, request_id: str) -> JSONResponse:
    """fal's answer for ``error``: its status code and body, its headers (``X-Fal-Error-Type`` ...) and
    ``x-fal-request-id`` (set here too: the 500 handler answers outside the request-id middleware)."""
    stored = error.to_stored() if isinstance(error, FalError) else error
    headers = {**stored.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(stored.body, status_code=stored.status_code, headers=headers)


async def send_error(error: FalError, scope: Scope, receive: Receive, send: Send) -> None:
    """``error_response`` sent by an ASGI layer that answers before any route (body limit, proxy)."""
    await error_response(error, response_request_id(scope))(scope, receive, send)


async def fal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FalError)
    return error_response(exc, response_request_id(request.scope))


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """fal's 422 ``{"detail": [{"loc", "msg", "type"}]}``, always encodable whatever the input was
    (NaN, ``1e999`` or lone surrogates echoed in ``input``/``ctx`` become text, never a 500)."""
    assert isinstance(exc, RequestValidationError)
    unprocessable = StoredError(422, {"detail": validation_items(exc.errors())})
    return error_response(unprocessable, response_request_id(request.scope))


async def redis_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Redis down or restarting: 503, so clients retry (nothing was accepted by this call)."""
    rid = response_request_id(request.scope)
    logger.warning("redis unavailable request_id=%s: %s", rid, exc)
    return error_response(ServiceUnavailableError("Queue store unavailable, retry later"), rid)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: a sanitized 500 naming the request id; the traceback is logged once."""
    rid = response_request_id(request.scope)
    logger.error("unhandled error request_id=%s", rid, exc_info=exc)
    return error_response(FalError(f"Internal server error (request id {rid})"), rid)
