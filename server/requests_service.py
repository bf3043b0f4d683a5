"""``RequestService``: what the queue and run APIs do with a request, without HTTP: submit, status,
result, cancel, and a run's wait for its result.

Built once per app (``server.app.create_app``) and fetched by the routes through ``server.deps``;
the routes (``server.routes.queue``, ``server.routes.run``) only turn HTTP into these calls and
their answers into responses. Failures are ``core.errors`` classes, rendered by the error handlers.
The status and submit answers are plain tuples and records, not pydantic models: those two are the
API's hot paths, and their routes build the wire body directly.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Literal, NamedTuple

import anyio
import redis

from core.errors import (
    EndpointNotFoundError,
    RequestInProgressError,
    RequestNotFoundError,
    RequestTimeoutError,
    ServerShuttingDownError,
    ServiceUnavailableError,
)
from core.protocol import CancelResponse, RequestStatus
from core.requests.api_store import RequestStore
from core.requests.records import NewRequest, RequestRecord, StatusView, is_request_id
from core.requests.scripts import CancelOutcome
from core.schemas import BitDanceInput
from core.settings import Settings
from server.object_lifecycle import ObjectLifecycle
from server.shutdown import Drain
from server.status_cache import StatusReader
from server.urls import app_id_of

logger = logging.getLogger(__name__)

Priority = Literal["normal", "low"]
RUN_DISCONNECT_CHECK_EVERY = 10  # a waiting run asks whether its client is still there every this many polls


class Submitted(NamedTuple):
    """A request just stored and enqueued."""

    request_id: str
    queue_position: int


class WaitEnd(Enum):
    """Why a run stopped waiting without a COMPLETED record."""

    CLIENT_GONE_OR_TIMED_OUT = "client_gone_or_timed_out"
    SHUTTING_DOWN = "shutting_down"


class RequestService:
    """Submit, status, result and cancel of the caller's requests under this deployment's endpoint."""

    def __init__(
        self,
        settings: Settings,
        store: RequestStore,
        reader: StatusReader,
        drain: Drain,
        rq_connection: redis.Redis,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reader = reader
        self.drain = drain
        self.rq_connection = rq_connection  # only lets RQ build its writes (``RequestStore.create``)
        self.endpoint_id = settings.endpoint_id
        self.app_id = app_id_of(settings.endpoint_id)  # what status, result and cancel URLs name

    # --- checks made before anything is read -------------------------------------------------------

    def check_endpoint(self, endpoint_id: str) -> None:
        """Submit and run: ``EndpointNotFoundError`` unless ``endpoint_id`` is this deployment's."""
        if endpoint_id.strip("/") != self.endpoint_id:
            raise EndpointNotFoundError(f"Application '{endpoint_id.strip('/')}' not found")

    def check_app(self, app_id: str) -> None:
        """Status, result, stream and cancel: ``EndpointNotFoundError`` unless ``app_id`` is this deployment's."""
        if app_id.strip("/") != self.app_id:
            raise EndpointNotFoundError(f"Application '{app_id.strip('/')}' not found")

    def check_request(self, app_id: str, request_id: str) -> None:
        """Status, result, stream: 404 for another app, and for an id this server never issues (a UUID),
        before Redis is asked anything. Past this check the id may be named in ``x-fal-request-id``."""
        self.check_app(app_id)
        if not is_request_id(request_id):
            raise RequestNotFoundError()

    # --- submit -------------------------------------------------------------------------------------

    async def submit(
        self,
        payload: BitDanceInput,
        *,
        owner: str,
        files_base: str,
        priority: Priority = "normal",
        start_timeout_s: float | None = None,
        webhook: str | None = None,
        lifecycle: ObjectLifecycle | None = None,
        max_queue_length: int | None = None,
    ) -> Submitted:
        """Store the request and enqueue it; the record is in Redis before this returns.

        Every argument is already validated (the routes parse headers and the webhook URL first).
        """
        limit = self.settings.max_queue_length  # the client's fal_max_queue_length can only lower it
        if max_queue_length is not None:
            limit = max_queue_length if limit is None else min(limit, max_queue_length)
        rid = str(uuid.uuid4())
        new = NewRequest(
            request_id=rid,
            owner=owner,
            endpoint=self.endpoint_id,
            input=payload.model_dump(mode="json"),
            priority=priority,
            files_base=files_base,
            start_timeout_s=start_timeout_s,
            webhook=webhook,
            lifecycle=lifecycle.to_record() if lifecycle else None,
        )
        try:
            position = await self.store.create(new, self.rq_connection, max_queue_length=limit)
        except redis.exceptions.OutOfMemoryError as exc:  # maxmemory reached (noeviction): nothing written
            logger.warning("submit refused: redis is at its maxmemory: %s", exc)
            raise ServiceUnavailableError(
                "Queue store is full, retry later", headers={"Retry-After": str(self.settings.queue_full_retry_after_s)}
            ) from exc
        except redis.RedisError as exc:  # the script did not run: nothing was enqueued, safe to resend
            raise ServiceUnavailableError("Queue unavailable, retry later") from exc
        return Submitted(rid, position)

    # --- read ---------------------------------------------------------------------------------------

    async def status(self, request_id: str, owner: str, *, with_logs: bool) -> StatusView:
        """What a status poll shows (from memory while nothing changed); after ``check_request``.

        Unknown ids and other owners' ids are both ``RequestNotFoundError``."""
        return await self.reader.view(request_id, owner, with_logs=with_logs)

    async def result(self, request_id: str, owner: str) -> RequestRecord:
        """The caller's COMPLETED request (``RequestInProgressError`` before); after ``check_request``."""
        return self._completed(await self.store.get(request_id, owner=owner))

    @staticmethod
    def _completed(record: RequestRecord) -> RequestRecord:
        if record.status is not RequestStatus.COMPLETED:
            raise RequestInProgressError()
        return record

    # --- cancel -------------------------------------------------------------------------------------

    async def cancel(self, request_id: str, owner: str) -> CancelResponse:
        """Cancel the caller's request: queued ones complete now, running ones stop at the next patch.

        An id never issued, an unknown id and another owner's id are all ``NOT_FOUND``."""
        if not is_request_id(request_id):
            return CancelResponse(status="NOT_FOUND")
        try:
            await self.store.get(request_id, owner=owner)
        except RequestNotFoundError:
            return CancelResponse(status="NOT_FOUND")
        outcome = await self.store.cancel(request_id)
        self.reader.request_changed(request_id)  # this process's next poll reads it, whatever the feed says
        match outcome:
            case CancelOutcome.CANCELLED | CancelOutcome.REQUESTED:
                return CancelResponse(status="CANCELLATION_REQUESTED")
            case CancelOutcome.COMPLETED:
                return CancelResponse(status="ALREADY_COMPLETED")
            case _:  # MISSING: expired meanwhile
                return CancelResponse(status="NOT_FOUND")

    # --- run: wait for the result -------------------------------------------------------------------

    async def wait_for_result(
        self, request_id: str, *, is_client_gone: Callable[[], Awaitable[bool]], response_url: str
    ) -> RequestRecord:
        """The COMPLETED record of a run's request.

        If the client goes away or ``run_timeout_s`` passes, the request is cancelled and this raises
        ``RequestTimeoutError``; when the API's shutdown grace period ends first, it raises
        ``ServerShuttingDownError`` naming ``response_url``, and the request goes on in the queue.
        """
        finished = await self._wait_for_completion(request_id, is_client_gone)
        if finished is WaitEnd.SHUTTING_DOWN:
            logger.info("run answered at shutdown, request continues request_id=%s", request_id)
            raise ServerShuttingDownError(
                f"The server is shutting down; request {request_id} continues in the queue: "
                f"fetch its result from {response_url}"
            )
        if finished is WaitEnd.CLIENT_GONE_OR_TIMED_OUT:
            await self.store.cancel(request_id)
            logger.info("run client disconnected, cancelled request_id=%s", request_id)
            raise RequestTimeoutError("Client disconnected or run timed out; request cancelled")
        return finished

    async def _wait_for_completion(
        self, request_id: str, is_client_gone: Callable[[], Awaitable[bool]]
    ) -> RequestRecord | WaitEnd:
        """The COMPLETED record, or why the wait ended without one. Once submitted, the request is
        accepted: the wait rides out Redis outages (restarts) until its timeout."""
        deadline = time.monotonic() + self.settings.run_timeout_s
        checks = 0
        is_redis_down = False
        while time.monotonic() < deadline:
            if self.drain.is_over():
                return WaitEnd.SHUTTING_DOWN
            try:
                record = await self.store.get(request_id)
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis restarting: keep waiting
                if not is_redis_down:
                    logger.warning("run waiting through a redis outage request_id=%s: %s", request_id, exc)
                is_redis_down = True
            else:
                if is_redis_down:
                    logger.info("redis back, run still waiting request_id=%s", request_id)
                is_redis_down = False
                if record.status is RequestStatus.COMPLETED:
                    return record
            checks += 1
            if checks % RUN_DISCONNECT_CHECK_EVERY == 0 and await is_client_gone():
                return WaitEnd.CLIENT_GONE_OR_TIMED_OUT
            await anyio.sleep(self.settings.poll_interval_s)
        return WaitEnd.CLIENT_GONE_OR_TIMED_OUT
