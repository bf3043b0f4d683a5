"""Queue API (fal's ``queue.fal.run``): submit, status, status stream, result, cancel.

Mounted under ``/queue``; a ``queue.*`` host is mapped onto it by the routing middleware and the
proxy dispatches here too, so each behaviour has exactly one handler.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import redis
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from server.auth import Caller, authenticate
from server.deps import drain_of, job_store, settings_of
from server.error_handlers import stored_error_response
from server.errors import (
    REQUEST_ID_HEADER,
    EndpointNotFoundError,
    QueueFullError,
    RequestInProgressError,
    RequestNotFoundError,
    ServiceUnavailableError,
)
from server.protocol import CancelResponse, JobStatus, QueueStatus, SubmitResponse
from server.queue.api_store import JobStore, create_request
from server.queue.records import NewRequest, RequestRecord
from server.schemas import BitDanceInput, BitDanceOutput
from server.settings import Settings
from server.shutdown import Drain
from server.storage import lifecycle_ttl_s
from server.urls import Urls, app_id_of, request_urls

router = APIRouter(prefix="/queue", tags=["queue"])

Priority = Literal["normal", "low"]


def check_endpoint(endpoint_id: str, settings: Settings, *, app_only: bool = False) -> None:
    expected = app_id_of(settings.endpoint_id) if app_only else settings.endpoint_id
    if endpoint_id.strip("/") != expected:
        raise EndpointNotFoundError(f"Application '{endpoint_id.strip('/')}' not found")


async def submit_new(
    request: Request,
    payload: BitDanceInput,
    caller: Caller,
    *,
    priority: Priority = "normal",
    start_timeout_s: float | None = None,
    webhook: str | None = None,
    lifecycle_header: str | None = None,
    max_queue_length: int | None = None,
) -> RequestRecord:
    """Store the request and enqueue it; the record is in Redis before this returns."""
    settings: Settings = request.app.state.settings
    jobs: JobStore = request.app.state.jobs
    limit = max_queue_length if max_queue_length is not None else settings.max_queue_length
    if limit is not None and sum((await jobs.queue_depth()).values()) >= limit:
        raise QueueFullError(f"Queue is full ({limit} requests waiting)")
    rid = str(uuid.uuid4())
    request.state.fal_request_id = rid
    lifecycle, _ = lifecycle_ttl_s(lifecycle_header)
    new = NewRequest(
        request_id=rid,
        owner=caller.key_id,
        endpoint=settings.endpoint_id,
        input=payload.model_dump(mode="json"),
        priority=priority,
        files_base=request_urls(request).base,
        start_timeout_s=start_timeout_s,
        webhook=webhook,
        lifecycle=lifecycle,
    )
    try:
        await anyio.to_thread.run_sync(create_request, request.app.state.sync_redis, settings, new)
    except redis.RedisError as exc:  # the MULTI did not run: nothing was enqueued, safe to resend
        raise ServiceUnavailableError("Queue unavailable, retry later") from exc
    return await jobs.get(rid)


async def build_status(
    jobs: JobStore, record: RequestRecord, urls: Urls, logs: list[dict[str, Any]] | None
) -> QueueStatus:
    position = await jobs.queue_position(record) if record.status is JobStatus.IN_QUEUE else None
    error = record.error
    return QueueStatus(
        status=record.status,
        request_id=record.request_id,
        queue_position=position,
        logs=logs,
        metrics=record.metrics(),
        error=error.message if error else None,
        error_type=error.error_type if error else None,
        **urls.for_request(app_id_of(record.endpoint), record.request_id).model_dump(),
    )


def parse_start_timeout(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "loc": ["header", "x-fal-request-timeout"],
                    "msg": "Input should be a number of seconds",
                    "type": "float_parsing",
                }
            ]
        ) from None
    return seconds if seconds > 0 else None


@router.post("/{endpoint_id:path}", response_model=SubmitResponse, summary="Submit a request to the queue")
async def submit(
    endpoint_id: str,
    payload: BitDanceInput,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    settings: Annotated[Settings, Depends(settings_of)],
    urls: Annotated[Urls, Depends(request_urls)],
    fal_webhook: Annotated[str | None, Query(description="URL POSTed to when the request ends")] = None,
    fal_max_queue_length: Annotated[int | None, Query(ge=0)] = None,
    priority: Annotated[Priority, Header(alias="x-fal-queue-priority")] = "normal",
    start_timeout: Annotated[str | None, Header(alias="x-fal-request-timeout")] = None,
    lifecycle: Annotated[str | None, Header(alias="x-fal-object-lifecycle-preference")] = None,
) -> JSONResponse:
    check_endpoint(endpoint_id, settings)
    record = await submit_new(
        request,
        payload,
        caller,
        priority=priority,
        start_timeout_s=parse_start_timeout(start_timeout),
        webhook=fal_webhook,
        lifecycle_header=lifecycle,
        max_queue_length=fal_max_queue_length,
    )
    position = await request.app.state.jobs.queue_position(record)
    body = SubmitResponse(
        request_id=record.request_id,
        gateway_request_id=record.gateway_request_id,
        queue_position=position,
        **urls.for_request(app_id_of(settings.endpoint_id), record.request_id).model_dump(),
    )
    return JSONResponse(body.model_dump(), headers={REQUEST_ID_HEADER: record.request_id})


async def owned_record(app_id: str, request_id: str, request: Request, caller: Caller, jobs: JobStore) -> RequestRecord:
    """The caller's request under this app (404 for another app, an unknown id or another owner's id)."""
    check_endpoint(app_id, request.app.state.settings, app_only=True)
    request.state.fal_request_id = request_id
    return await jobs.get(request_id, owner=caller.key_id)


@router.get(
    "/{app_id:path}/requests/{request_id}/status",
    response_model=QueueStatus,
    summary="Status of a request (202 until COMPLETED, then 200)",
)
async def get_status(
    app_id: str,
    request_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    jobs: Annotated[JobStore, Depends(job_store)],
    urls: Annotated[Urls, Depends(request_urls)],
    logs: bool = False,
) -> JSONResponse:
    record = await owned_record(app_id, request_id, request, caller, jobs)
    entries = await jobs.logs(request_id) if logs else None
    status = await build_status(jobs, record, urls, entries)
    code = 200 if record.status is JobStatus.COMPLETED else 202
    return JSONResponse(status.to_wire(), status_code=code)


@router.get(
    "/{app_id:path}/requests/{request_id}/status/stream",
    summary="Server-sent status events until COMPLETED (logs are incremental)",
    response_class=StreamingResponse,
)
async def stream_status(
    app_id: str,
    request_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    jobs: Annotated[JobStore, Depends(job_store)],
    urls: Annotated[Urls, Depends(request_urls)],
    drain: Annotated[Drain, Depends(drain_of)],
    logs: bool = False,
) -> StreamingResponse:
    await owned_record(app_id, request_id, request, caller, jobs)
    settings: Settings = request.app.state.settings
    events = status_events(jobs, request_id, urls, logs, settings, drain)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def status_events(
    jobs: JobStore, request_id: str, urls: Urls, include_logs: bool, settings: Settings, drain: Drain
) -> AsyncIterator[str]:
    """One ``data:`` event per change, ``: ping`` keep-alives, and the end right after COMPLETED
    (or, when the API shuts down, at the end of its grace period: a clean end of the stream)."""
    sent_logs = 0
    last_payload = ""
    last_sent = time.monotonic()
    while True:
        record = await jobs.get(request_id)
        new_logs = await jobs.logs(request_id, sent_logs) if include_logs else []
        sent_logs += len(new_logs)
        status = await build_status(jobs, record, urls, new_logs)
        payload = json.dumps(status.to_wire())
        if payload != last_payload:
            yield f"data: {payload}\n\n"
            last_payload, last_sent = payload, time.monotonic()
        if record.status is JobStatus.COMPLETED or drain.is_over():
            return
        if time.monotonic() - last_sent >= settings.stream_keepalive_s:
            yield ": ping\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(settings.poll_interval_s * 2)


@router.get(
    "/{app_id:path}/requests/{request_id}",
    response_model=BitDanceOutput,
    summary="Result of a completed request (the output itself, or the stored error)",
)
async def get_result(
    app_id: str,
    request_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    jobs: Annotated[JobStore, Depends(job_store)],
) -> JSONResponse:
    return result_response(await owned_record(app_id, request_id, request, caller, jobs))


def result_response(record: RequestRecord) -> JSONResponse:
    if record.status is not JobStatus.COMPLETED:
        raise RequestInProgressError()
    if record.error is not None:
        return stored_error_response(record.error, record.request_id)
    return JSONResponse(record.result, headers={REQUEST_ID_HEADER: record.request_id})


@router.put(
    "/{app_id:path}/requests/{request_id}/cancel",
    response_model=CancelResponse,
    status_code=202,
    summary="Cancel: 202 requested, 400 already completed, 404 unknown",
)
async def cancel(
    app_id: str,
    request_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    jobs: Annotated[JobStore, Depends(job_store)],
) -> JSONResponse:
    try:  # an unknown app still raises its own error; only an unknown request answers NOT_FOUND
        await owned_record(app_id, request_id, request, caller, jobs)
    except RequestNotFoundError:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    outcome = await jobs.cancel(request_id)
    if outcome in ("cancelled", "requested"):
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
    if outcome == "completed":
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
