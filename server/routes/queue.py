"""Queue API (fal's ``queue.fal.run``): submit, status, status stream, result, cancel.

Mounted under ``/queue``; a ``queue.*`` host is mapped onto it by the routing middleware and the
proxy dispatches here too, so each behaviour has exactly one handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, NamedTuple

import anyio
import redis
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from server.auth import Caller, authenticate, caller_of
from server.change_feed import ChangeFeed
from server.deps import change_feed, drain_of, job_store, queue_snapshot, status_reader
from server.error_handlers import field_error, stored_error_response
from server.errors import (
    REQUEST_ID_HEADER,
    EndpointNotFoundError,
    QueueFullError,
    RequestInProgressError,
    RequestNotFoundError,
    ServiceUnavailableError,
)
from server.json_response import FastJSONResponse, dumps
from server.object_lifecycle import ObjectLifecycle, parse_object_lifecycle
from server.protocol import CancelResponse, JobStatus, QueueStatus, SubmitResponse, queue_status_body
from server.queue.api_store import JobStore
from server.queue.records import NewRequest, RequestRecord, StatusView, is_request_id
from server.queue.scripts import CancelOutcome
from server.schemas import BitDanceInput, BitDanceOutput
from server.settings import Settings
from server.shutdown import Drain
from server.status_cache import QueueSnapshot, StatusReader
from server.urls import Urls, app_id_of, request_urls, urls_of
from server.webhook_targets import WebhookTargetError, check_webhook_url

router = APIRouter(prefix="/queue", tags=["queue"])

Priority = Literal["normal", "low"]
LOW_PRIORITY_RECHECK_S = 1.0
DRAIN_CHECK_S = 0.25
QUEUE_MOVE_COALESCE_S = 0.05  # a stream woken by a queue move waits this long, so a burst of moves costs one read


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
    lifecycle: ObjectLifecycle | None = None,
    max_queue_length: int | None = None,
) -> Submitted:
    """Store the request and enqueue it; the record is in Redis before this returns.

    Every argument is already validated (the routes parse headers and the webhook URL first).
    """
    settings: Settings = request.app.state.settings
    jobs: JobStore = request.app.state.jobs
    limit = max_queue_length if max_queue_length is not None else settings.max_queue_length
    if limit is not None and sum((await jobs.queue_depth()).values()) >= limit:
        raise QueueFullError(f"Queue is full ({limit} requests waiting)")
    rid = str(uuid.uuid4())
    request.state.fal_request_id = rid
    new = NewRequest(
        request_id=rid,
        owner=caller.key_id,
        endpoint=settings.endpoint_id,
        input=payload.model_dump(mode="json"),
        priority=priority,
        files_base=urls_of(request).base,
        start_timeout_s=start_timeout_s,
        webhook=webhook,
        lifecycle=lifecycle.to_record() if lifecycle else None,
    )
    try:
        position = await jobs.create(new, request.app.state.sync_redis)
    except redis.RedisError as exc:  # the MULTI did not run: nothing was enqueued, safe to resend
        raise ServiceUnavailableError("Queue unavailable, retry later") from exc
    return Submitted(rid, position)


class Submitted(NamedTuple):
    """A request just stored and enqueued."""

    request_id: str
    queue_position: int


def build_status(view: StatusView, urls: Urls, logs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The ``QueueStatus`` wire body of a request (built without the model: the polling hot path)."""
    error = view.error
    return queue_status_body(
        view.status,
        view.request_id,
        urls.request_urls(app_id_of(view.endpoint), view.request_id),
        queue_position=view.queue_position,
        logs=logs,
        inference_time=view.inference_time,
        error=error.message if error else None,
        error_type=error.error_type if error else None,
    )


def parse_start_timeout(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
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


async def checked_webhook_url(url: str | None, settings: Settings) -> str | None:
    """The ``fal_webhook`` URL when this deployment may send to it (422 naming it otherwise)."""
    if not url:
        return None
    try:
        await anyio.to_thread.run_sync(check_webhook_url, url, settings.webhook_allow_private)
    except WebhookTargetError as exc:
        raise field_error(("query", "fal_webhook"), str(exc), "value_error") from None
    return url


@router.post("/{endpoint_id:path}", response_model=SubmitResponse, summary="Submit a request to the queue")
async def submit(
    endpoint_id: str,
    payload: BitDanceInput,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],  # a dependency: 401 before the body is validated
    fal_webhook: Annotated[str | None, Query(description="URL POSTed to when the request ends")] = None,
    fal_max_queue_length: Annotated[int | None, Query(ge=0)] = None,
    priority: Annotated[Priority, Header(alias="x-fal-queue-priority")] = "normal",
    start_timeout: Annotated[str | None, Header(alias="x-fal-request-timeout")] = None,
    lifecycle: Annotated[str | None, Header(alias="x-fal-object-lifecycle-preference")] = None,
) -> JSONResponse:
    settings: Settings = request.app.state.settings  # no dependency for these: the submit hot path
    urls = urls_of(request)
    check_endpoint(endpoint_id, settings)
    webhook = await checked_webhook_url(fal_webhook, settings)
    submitted = await submit_new(
        request,
        payload,
        caller,
        priority=priority,
        start_timeout_s=parse_start_timeout(start_timeout),
        webhook=webhook,
        lifecycle=parse_object_lifecycle(lifecycle),
        max_queue_length=fal_max_queue_length,
    )
    rid = submitted.request_id
    body = {  # SubmitResponse's fields and order, without the model (the submit hot path)
        **urls.request_urls(app_id_of(settings.endpoint_id), rid),
        "status": "IN_QUEUE",
        "request_id": rid,
        "gateway_request_id": rid,
        "queue_position": submitted.queue_position,
    }
    return FastJSONResponse(body, headers={REQUEST_ID_HEADER: rid})


async def owned_status(
    app_id: str, request_id: str, request: Request, caller: Caller, jobs: JobStore, *, logs_from: int | None
) -> StatusView:
    """``owned_record``'s checks, reading only what a status shows (one round trip)."""
    check_endpoint(app_id, request.app.state.settings, app_only=True)
    if not is_request_id(request_id):  # as in owned_record: 404 before Redis, never echoed
        raise RequestNotFoundError()
    request.state.fal_request_id = request_id
    return await jobs.status_view(request_id, owner=caller.key_id, logs_from=logs_from)


async def owned_record(app_id: str, request_id: str, request: Request, caller: Caller, jobs: JobStore) -> RequestRecord:
    """The caller's request under this app (404 for another app, an unknown id or another owner's id).

    An id that is not one this server issues (a UUID) is a 404 before Redis is asked anything, and it
    never reaches a response header; unknown and other owners' ids get the very same answer.
    """
    check_endpoint(app_id, request.app.state.settings, app_only=True)
    if not is_request_id(request_id):
        raise RequestNotFoundError()
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
    logs: bool = False,
) -> JSONResponse:
    # The polling hot path resolves no dependencies: FastAPI's resolution of the three it had was a
    # third of a status call's CPU (issue 9). Authentication still comes first.
    caller = caller_of(request)
    reader: StatusReader = request.app.state.status_reader
    urls = urls_of(request)
    check_endpoint(app_id, request.app.state.settings, app_only=True)
    if not is_request_id(request_id):  # as in owned_record: 404 before Redis, never echoed
        raise RequestNotFoundError()
    request.state.fal_request_id = request_id
    view = await reader.view(request_id, caller.key_id, with_logs=logs)
    code = 200 if view.status is JobStatus.COMPLETED else 202
    return FastJSONResponse(build_status(view, urls, view.logs), status_code=code)


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
    feed: Annotated[ChangeFeed, Depends(change_feed)],
    snapshot: Annotated[QueueSnapshot, Depends(queue_snapshot)],
    drain: Annotated[Drain, Depends(drain_of)],
    logs: bool = False,
) -> StreamingResponse:
    await owned_status(app_id, request_id, request, caller, jobs, logs_from=None)
    settings: Settings = request.app.state.settings
    events = status_events(jobs, feed, snapshot, request_id, urls, logs, settings, drain)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def status_events(
    jobs: JobStore,
    feed: ChangeFeed,
    snapshot: QueueSnapshot,
    request_id: str,
    urls: Urls,
    include_logs: bool,
    settings: Settings,
    drain: Drain,
) -> AsyncIterator[bytes]:
    """One ``data:`` event per change, ``: ping`` keep-alives, and the end right after COMPLETED
    (or, when the API shuts down, at the end of its grace period: a clean end of the stream).

    The stream reads its request when the change feed says it changed (or, while it is queued, that
    the queue moved), never on a timer: an idle stream costs a keep-alive every
    ``stream_keepalive_s``. Low-priority positions also grow with normal submits, which publish
    nothing: a queued low-priority stream re-reads every ``LOW_PRIORITY_RECHECK_S`` too. A queue
    move alone only changes positions: those come from one ``QueueSnapshot`` shared by all streams.
    """
    watch = feed.watch(request_id)  # before the first read: no change can fall in between
    try:
        if not feed.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.connected.wait(), settings.stream_keepalive_s)
        sent_logs = 0
        last_payload = b""
        last_sent = time.monotonic()
        view: StatusView | None = None
        while True:
            position = await snapshot.position(request_id) if view is not None else None
            if view is not None and position is not None:  # only the queue moved, and it is still queued
                view = dataclasses.replace(view, queue_position=position, logs=None)
            else:
                view = await jobs.status_view(request_id, logs_from=sent_logs if include_logs else None)
            new_logs = view.logs or []
            sent_logs += len(new_logs)
            payload = dumps(build_status(view, urls, new_logs))
            if payload != last_payload:
                yield b"data: " + payload + b"\n\n"
                last_payload, last_sent = payload, time.monotonic()
            if view.status is JobStatus.COMPLETED or drain.is_over():
                return
            queued = view.status is JobStatus.IN_QUEUE
            watch.follow_queue(queued)
            recheck_s = LOW_PRIORITY_RECHECK_S if queued and view.queue == settings.queue_low else None
            while True:
                idle_s = settings.stream_keepalive_s - (time.monotonic() - last_sent)
                timeout_s = min(idle_s, recheck_s or idle_s)
                if drain.is_draining:  # woken when the drain begins (app lifespan): end with the grace period
                    timeout_s = min(timeout_s, DRAIN_CHECK_S)
                if await watch.wait(max(0.0, timeout_s)):
                    break
                if drain.is_over() or (recheck_s is not None and idle_s > recheck_s):
                    break
                if drain.is_draining and idle_s > DRAIN_CHECK_S:
                    continue
                yield b": ping\n\n"
                last_sent = time.monotonic()
            if watch.take_own_change() or not queued or recheck_s is not None:
                view = None  # read the request itself
            else:  # only the queue moved: let a burst of moves coalesce, then read positions
                await asyncio.sleep(QUEUE_MOVE_COALESCE_S)
                if watch.take_own_change():
                    view = None
    finally:
        watch.close()


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
    reader: Annotated[StatusReader, Depends(status_reader)],
) -> JSONResponse:
    try:  # an unknown app still raises its own error; only an unknown request answers NOT_FOUND
        await owned_record(app_id, request_id, request, caller, jobs)
    except RequestNotFoundError:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    outcome = await jobs.cancel(request_id)
    reader.request_changed(request_id)  # this process's next poll reads it, whatever the feed says
    if outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED):
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
    if outcome is CancelOutcome.COMPLETED:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
