"""fal's queue wire shapes: submit response, queue status, log entries, cancel and webhook bodies.

Field names are exactly fal's. The models are the schema (FastAPI's OpenAPI, fal's per-endpoint
document); the two hot answers, submit and status, are written by one encoder each
(``submit_body``, ``queue_status_body``), whose output the unit tests validate against the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # records import this module's RequestStatus
    from core.requests.records import StatusView


class RequestStatus(StrEnum):
    """The only three statuses that exist on the wire."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"

    def is_terminal(self) -> bool:
        return self is RequestStatus.COMPLETED


LogLevel = Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]


class LogEntry(BaseModel):
    """One user-visible log line of a request."""

    message: str
    level: LogLevel = "INFO"
    source: Literal["USER"] = "USER"
    timestamp: str = Field(..., description="ISO-8601 with UTC offset.")

    @classmethod
    def now(cls, message: str, level: LogLevel = "INFO") -> LogEntry:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        return cls(message=message, level=level, timestamp=stamp)


class RequestUrls(BaseModel):
    """The three absolute URLs of a queued request."""

    response_url: str
    status_url: str
    cancel_url: str


class SubmitResponse(RequestUrls):
    """Answer to a queue submit."""

    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    gateway_request_id: str
    queue_position: int = 0


class QueueStatus(RequestUrls):
    """Answer to a status poll and one event of the status stream: the schema (OpenAPI) of what
    ``queue_status_body`` writes."""

    status: RequestStatus
    request_id: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None


def submit_body(request_id: str, urls: Mapping[str, str], queue_position: int) -> dict[str, Any]:
    """A ``SubmitResponse`` on the wire, its fields in the model's order.

    Built as a dict, not through the model: submit is one of the API's two hot paths. ``urls`` holds
    the three ``RequestUrls`` fields.
    """
    return {
        **urls,
        "status": "IN_QUEUE",
        "request_id": request_id,
        "gateway_request_id": request_id,
        "queue_position": queue_position,
    }


def queue_status_body(view: StatusView, urls: Mapping[str, str], logs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A ``QueueStatus`` on the wire, as fal's clients read it: ``queue_position`` only while queued,
    ``logs`` always (``null`` when not asked for: the Python client reads ``data["logs"]``
    unconditionally), ``inference_time`` once COMPLETED, ``error``/``error_type`` only on failures.

    The one encoder of the status shape (polls and stream events alike), built as a dict: the status
    poll is the API's hot path. ``urls`` holds the three ``RequestUrls`` fields; ``logs`` are the
    entries to send (all of them for a poll, the new ones for a stream event).
    """
    status = view.status
    body: dict[str, Any] = {**urls, "status": status.value, "request_id": view.request_id}
    if status is RequestStatus.IN_QUEUE:
        body["queue_position"] = view.queue_position
    body["logs"] = logs
    body["metrics"] = {"inference_time": view.inference_time} if status is RequestStatus.COMPLETED else {}
    if view.error is not None:
        body["error"] = view.error.message
        body["error_type"] = view.error.error_type
    return body


CancelStatus = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]
CANCEL_STATUS_CODES: dict[str, int] = {"CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}


class CancelResponse(BaseModel):
    """Answer to a cancel: the code carries the outcome (202/400/404)."""

    status: CancelStatus

    @property
    def status_code(self) -> int:
        """The HTTP status code that carries this outcome."""
        return CANCEL_STATUS_CODES[self.status]


class ErrorBody(BaseModel):
    """Request/infrastructure error body; ``error_type`` is echoed in ``X-Fal-Error-Type``."""

    detail: str
    error_type: str | None = None


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """FastAPI/pydantic 422 body, which is fal's."""

    detail: list[ValidationErrorItem]


class WebhookBody(BaseModel):
    """POSTed to ``fal_webhook`` when a request ends."""

    request_id: str
    gateway_request_id: str
    status: Literal["OK", "ERROR"]
    payload: Any = None
    error: str | None = None
    payload_error: str | None = None
