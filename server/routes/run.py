"""Run API (fal's ``fal.run``): submit through the queue, wait, answer with the output itself.

The model never runs in the API process. If the client goes away or ``run_timeout_s`` passes, the
request is cancelled (fal: a dropped connection cancels the work). Once submitted, the request is
accepted: the wait rides out Redis outages (restarts) until its timeout instead of answering 503,
which would make the client send the same work again. When the API shuts down (``server.shutdown``),
a run still waiting at the end of the grace period is answered with fal's error shape and its
``x-fal-request-id``, and its request is left to finish in the queue. The waiting itself is
``RequestService.wait_for_result``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from core.schemas import BitDanceInput, BitDanceOutput
from server.auth import Caller, authenticate
from server.deps import request_service
from server.json_bodies import JsonBoundedRoute
from server.object_lifecycle import parse_object_lifecycle
from server.request_ids import name_request
from server.requests_service import RequestService
from server.routes.request_http import parse_start_timeout, result_response
from server.urls import urls_of

router = APIRouter(tags=["run"], route_class=JsonBoundedRoute)


@router.post("/{endpoint_id:path}", response_model=BitDanceOutput, summary="Run and wait for the output")
async def run(
    endpoint_id: str,
    payload: BitDanceInput,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    requests: Annotated[RequestService, Depends(request_service)],
    start_timeout: Annotated[str | None, Header(alias="x-fal-request-timeout")] = None,
    lifecycle: Annotated[str | None, Header(alias="x-fal-object-lifecycle-preference")] = None,
) -> JSONResponse:
    requests.check_endpoint(endpoint_id)
    start_timeout_s, object_lifecycle = parse_start_timeout(start_timeout), parse_object_lifecycle(lifecycle)
    urls = urls_of(request)
    submitted = await requests.submit(
        payload, owner=caller.key_id, files_base=urls.base, start_timeout_s=start_timeout_s, lifecycle=object_lifecycle
    )
    rid = submitted.request_id
    name_request(request.scope, rid)
    record = await requests.wait_for_result(
        rid,
        is_client_gone=request.is_disconnected,
        response_url=urls.response_url(requests.endpoint_id, rid),
    )
    return result_response(record)
