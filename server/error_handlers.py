"""The one place that renders errors as fal does: ``FalError`` subclasses, Redis outages, anything else.

Registered on the app by ``server.app.create_app``; routes raise ``server.errors`` classes.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse

from server.errors import REQUEST_ID_HEADER, FalError, ServiceUnavailableError, StoredError

logger = logging.getLogger(__name__)


def request_id_of(request: Request) -> str:
    """The id this response is about (set by the route), else a fresh one for this HTTP request."""
    rid = getattr(request.state, "fal_request_id", None)
    if not rid:
        rid = str(uuid.uuid4())
        request.state.fal_request_id = rid
    return str(rid)


def stored_error_response(error: StoredError, request_id: str) -> JSONResponse:
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(error.body, status_code=error.status_code, headers=headers)


async def fal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FalError)
    return stored_error_response(exc.to_stored(), request_id_of(request))


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
