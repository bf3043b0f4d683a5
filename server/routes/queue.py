"""Queue API (fal's ``queue.fal.run``): submit, status, status stream, result, cancel.

Mounted under ``/queue``; a ``queue.*`` host is mapped onto it by the routing middleware and the
proxy dispatches here too, so each behaviour has exactly one handler. Each route turns HTTP into a
``RequestService`` (or ``StatusStream``) call and its answer into a response. Submit and status are
the hot paths: they fetch the service from ``app.state`` without resolving dependencies, and build
their bodies as dicts encoded with orjson (``FastJSONResponse``) instead of through the models.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from core.protocol import CancelResponse, QueueStatus, RequestStatus, SubmitResponse, queue_status_body, submit_body
from core.schemas import BitDanceInput, BitDanceOutput
from server.auth import Caller, authenticate, caller_of
from server.deps import request_service, status_stream
from server.json_bodies import JsonBoundedRoute
from server.json_response import FastJSONResponse
from server.object_lifecycle import parse_object_lifecycle
from server.request_ids import name_request
from server.requests_service import Priority, RequestService
from server.routes.request_http import checked_webhook_url, parse_start_timeout, result_response
from server.status_stream import StatusStream
from server.urls import Urls, request_urls, urls_of

router = APIRouter(prefix="/queue", tags=["queue"], route_class=JsonBoundedRoute)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    requests: RequestService = request.app.state.requests  # no dependency for these: the submit hot path
    urls = urls_of(request)
    requests.check_endpoint(endpoint_id)
    webhook = await checked_webhook_url(fal_webhook, requests.settings.webhook_allow_private)
    submitted = await requests.submit(
        payload,
        owner=caller.key_id,
        files_base=urls.base,
        priority=priority,
        start_timeout_s=parse_start_timeout(start_timeout),
        webhook=webhook,
        lifecycle=parse_object_lifecycle(lifecycle),
        max_queue_length=fal_max_queue_length,
    )
    rid = submitted.request_id
    name_request(request.scope, rid)
    return FastJSONResponse(submit_body(rid, urls.request_urls(requests.endpoint_id, rid), submitted.queue_position))


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
    requests: RequestService = request.app.state.requests
    urls = urls_of(request)
    requests.check_request(app_id, request_id)
    name_request(request.scope, request_id)
    view = await requests.status(request_id, caller.key_id, with_logs=logs)
    code = 200 if view.status is RequestStatus.COMPLETED else 202
    body = queue_status_body(view, urls.request_urls(view.endpoint, view.request_id), view.logs)
    return FastJSONResponse(body, status_code=code)


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
    requests: Annotated[RequestService, Depends(request_service)],
    streams: Annotated[StatusStream, Depends(status_stream)],
    urls: Annotated[Urls, Depends(request_urls)],
    logs: bool = False,
) -> StreamingResponse:
    requests.check_request(app_id, request_id)
    name_request(request.scope, request_id)
    events = await streams.open(request_id, caller.key_id, urls, include_logs=logs)
    return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)


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
    requests: Annotated[RequestService, Depends(request_service)],
) -> JSONResponse:
    requests.check_request(app_id, request_id)
    name_request(request.scope, request_id)
    return result_response(await requests.result(request_id, caller.key_id))


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
    response: Response,
    caller: Annotated[Caller, Depends(authenticate)],
    requests: Annotated[RequestService, Depends(request_service)],
) -> CancelResponse:
    requests.check_app(app_id)  # another app is its own 404; an unknown request answers NOT_FOUND
    name_request(request.scope, request_id)  # named only if it is an id this server issues
    answer = await requests.cancel(request_id, caller.key_id)
    response.status_code = answer.status_code
    return answer
