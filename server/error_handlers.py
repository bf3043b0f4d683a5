"""The one place that renders errors as fal does: ``FalError`` subclasses, validation errors (fal's
422), Redis outages, anything else.

Registered on the app by ``server.app.create_app``; routes raise ``core.errors`` classes.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.errors import REQUEST_ID_HEADER, FalError, ServiceUnavailableError, StoredError
from core.requests.records import is_request_id

logger = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
# What a 422 item may carry (fal's shape: loc, msg, type; ctx and input optional).
_VALIDATION_ITEM_KEYS = ("loc", "msg", "type", "ctx", "input")


def request_id_of(request: Request) -> str:
    """The id this response is about (set by the route), else a fresh one for this HTTP request.

    Only a well-formed id is ever returned: it goes into the ``x-fal-request-id`` header.
    """
    rid = getattr(request.state, "fal_request_id", None)
    if not is_request_id(rid):
        rid = str(uuid.uuid4())
        request.state.fal_request_id = rid
    return str(rid)


def field_error(loc: Sequence[str | int], msg: str, kind: str) -> RequestValidationError:
    """A validation error in fal's 422 shape for an input the models do not cover (headers, query)."""
    return RequestValidationError([{"loc": list(loc), "msg": msg, "type": kind}])


def json_safe(value: Any) -> Any:
    """``value`` made encodable as strict UTF-8 JSON: non-finite floats become their names
    (``"NaN"``, ``"Infinity"``), lone surrogates and undecodable bytes become U+FFFD."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, bool | int):
        return value
    return json_safe(str(value))


def validation_items(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic/FastAPI error items reduced to fal's keys, every value JSON-safe."""
    return [json_safe({key: error[key] for key in _VALIDATION_ITEM_KEYS if key in error}) for error in errors]


def stored_error_response(error: StoredError, request_id: str) -> JSONResponse:
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(error.body, status_code=error.status_code, headers=headers)


async def fal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FalError)
    return stored_error_response(exc.to_stored(), request_id_of(request))


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """fal's 422 ``{"detail": [{"loc", "msg", "type"}]}``, always encodable whatever the input was
    (NaN, ``1e999`` or lone surrogates echoed in ``input``/``ctx`` become text, never a 500)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_items(exc.errors())}, status_code=422)


async def redis_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Redis down or restarting: 503, so clients retry (nothing was accepted by this call)."""
    logger.warning("redis unavailable request_id=%s: %s", request_id_of(request), exc)
    error = ServiceUnavailableError("Queue store unavailable, retry later")
    return stored_error_response(error.to_stored(), request_id_of(request))


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: a sanitized 500 naming the request id; the traceback is logged once."""
    rid = request_id_of(request)
    logger.error("unhandled error request_id=%s", rid, exc_info=exc)
    body = {"detail": f"Internal server error (request id {rid})", "error_type": "internal_error"}
    return JSONResponse(body, status_code=500, headers={REQUEST_ID_HEADER: rid, "X-Fal-Error-Type": "internal_error"})
