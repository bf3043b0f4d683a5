"""Run API (fal's ``fal.run``): submit through the queue, wait, answer with the output itself.

The model never runs in the API process. If the client goes away or ``run_timeout_s`` passes, the
request is cancelled (fal: a dropped connection cancels the work). Once submitted, the request is
accepted: the wait rides out Redis outages (restarts) until its timeout instead of answering 503,
which would make the client send the same work again. When the API shuts down (``server.shutdown``),
a run still waiting at the end of the grace period is answered with fal's error shape and its
``x-fal-request-id``, and its request is left to finish in the queue.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from typing import Annotated

import anyio
import redis
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from server.auth import Caller, authenticate
from server.deps import drain_of, job_store, settings_of
from server.errors import RequestTimeoutError, ServerShuttingDownError
from server.object_lifecycle import parse_object_lifecycle
from server.protocol import JobStatus
from server.queue.api_store import JobStore
from server.queue.records import RequestRecord
from server.routes.queue import check_endpoint, parse_start_timeout, result_response, submit_new
from server.schemas import BitDanceInput, BitDanceOutput
from server.settings import Settings
from server.shutdown import Drain
from server.urls import app_id_of, urls_of

logger = logging.getLogger(__name__)

router = APIRouter(tags=["run"])


class WaitEnd(Enum):
    """Why a run stopped waiting without a COMPLETED record."""

    CLIENT_GONE_OR_TIMED_OUT = "client_gone_or_timed_out"
    SHUTTING_DOWN = "shutting_down"


@router.post("/{endpoint_id:path}", response_model=BitDanceOutput, summary="Run and wait for the output")
async def run(
    endpoint_id: str,
    payload: BitDanceInput,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    settings: Annotated[Settings, Depends(settings_of)],
    jobs: Annotated[JobStore, Depends(job_store)],
    drain: Annotated[Drain, Depends(drain_of)],
    start_timeout: Annotated[str | None, Header(alias="x-fal-request-timeout")] = None,
    lifecycle: Annotated[str | None, Header(alias="x-fal-object-lifecycle-preference")] = None,
) -> JSONResponse:
    check_endpoint(endpoint_id, settings)
    record = await submit_new(
        request,
        payload,
        caller,
        start_timeout_s=parse_start_timeout(start_timeout),
        lifecycle=parse_object_lifecycle(lifecycle),
    )
    finished = await wait_for_completion(request, jobs, record.request_id, settings, drain)
    if finished is WaitEnd.SHUTTING_DOWN:
        urls = urls_of(request).for_request(app_id_of(settings.endpoint_id), record.request_id)
        logger.info("run answered at shutdown, request continues request_id=%s", record.request_id)
        raise ServerShuttingDownError(
            f"The server is shutting down; request {record.request_id} continues in the queue: "
            f"fetch its result from {urls.response_url}"
        )
    if finished is WaitEnd.CLIENT_GONE_OR_TIMED_OUT:
        await jobs.cancel(record.request_id)
        logger.info("run client disconnected, cancelled request_id=%s", record.request_id)
        raise RequestTimeoutError("Client disconnected or run timed out; request cancelled")
    return result_response(finished)


async def wait_for_completion(
    request: Request, jobs: JobStore, request_id: str, settings: Settings, drain: Drain
) -> RequestRecord | WaitEnd:
    """The COMPLETED record, or why the wait ended without one."""
    deadline = time.monotonic() + settings.run_timeout_s
    checks = 0
    is_redis_down = False
    while time.monotonic() < deadline:
        if drain.is_over():
            return WaitEnd.SHUTTING_DOWN
        try:
            record = await jobs.get(request_id)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis restarting: keep waiting
            if not is_redis_down:
                logger.warning("run waiting through a redis outage request_id=%s: %s", request_id, exc)
            is_redis_down = True
        else:
            if is_redis_down:
                logger.info("redis back, run still waiting request_id=%s", request_id)
            is_redis_down = False
            if record.status is JobStatus.COMPLETED:
                return record
        checks += 1
        if checks % 10 == 0 and await request.is_disconnected():
            return WaitEnd.CLIENT_GONE_OR_TIMED_OUT
        await anyio.sleep(settings.poll_interval_s)
    return WaitEnd.CLIENT_GONE_OR_TIMED_OUT
