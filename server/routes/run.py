"""Run API (fal's ``fal.run``): submit through the queue, wait, answer with the output itself.

The model never runs in the API process. If the client goes away or ``run_timeout_s`` passes, the
request is cancelled (fal: a dropped connection cancels the work).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from server.auth import Caller, authenticate
from server.deps import job_store, settings_of
from server.errors import RequestTimeoutError
from server.protocol import JobStatus
from server.queue.api_store import JobStore
from server.queue.records import RequestRecord
from server.routes.queue import check_endpoint, parse_start_timeout, result_response, submit_new
from server.schemas import BitDanceInput, BitDanceOutput
from server.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["run"])


@router.post("/{endpoint_id:path}", response_model=BitDanceOutput, summary="Run and wait for the output")
async def run(
    endpoint_id: str,
    payload: BitDanceInput,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    settings: Annotated[Settings, Depends(settings_of)],
    jobs: Annotated[JobStore, Depends(job_store)],
    start_timeout: Annotated[str | None, Header(alias="x-fal-request-timeout")] = None,
    lifecycle: Annotated[str | None, Header(alias="x-fal-object-lifecycle-preference")] = None,
) -> JSONResponse:
    check_endpoint(endpoint_id, settings)
    record = await submit_new(
        request,
        payload,
        caller,
        start_timeout_s=parse_start_timeout(start_timeout),
        lifecycle_header=lifecycle,
    )
    finished = await wait_for_completion(request, jobs, record.request_id, settings)
    if finished is None:
        await jobs.cancel(record.request_id)
        logger.info("run client disconnected, cancelled request_id=%s", record.request_id)
        raise RequestTimeoutError("Client disconnected or run timed out; request cancelled")
    return result_response(finished)


async def wait_for_completion(
    request: Request, jobs: JobStore, request_id: str, settings: Settings
) -> RequestRecord | None:
    """The COMPLETED record, or None if the client disconnected or ``run_timeout_s`` passed."""
    deadline = time.monotonic() + settings.run_timeout_s
    checks = 0
    while time.monotonic() < deadline:
        record = await jobs.get(request_id)
        if record.status is JobStatus.COMPLETED:
            return record
        checks += 1
        if checks % 10 == 0 and await request.is_disconnected():
            return None
        await anyio.sleep(settings.poll_interval_s)
    return None
