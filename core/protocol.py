"""fal's queue wire shapes: submit response, queue status, log entries, cancel and webhook bodies.

Field names are exactly fal's. ``QueueStatus.to_wire`` keeps ``logs`` present (``null`` when logs
are off) because the Python client reads ``data["logs"]`` unconditionally.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    """The only three statuses that exist on the wire."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"

    def is_terminal(self) -> bool:
        return self is JobStatus.COMPLETED


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
    """Answer to a status poll and one event of the status stream."""

    status: JobStatus
    request_id: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """fal's shape: queue_position only while queued, error fields only on failures, logs always."""
        body = self.model_dump(mode="json")
        if self.status is not JobStatus.IN_QUEUE:
            body.pop("queue_position")
        for key in ("error", "error_type"):
            if body[key] is None:
                body.pop(key)
        return body


def queue_status_body(
    status: JobStatus,
    request_id: str,
    urls: dict[str, str],
    *,
    queue_position: int | None,
    logs: list[dict[str, Any]] | None,
    inference_time: float | None,
    error: str | None,
    error_type: str | None,
) -> dict[str, Any]:
    """``QueueStatus(...).to_wire()`` built directly: the status poll's hot path skips the model.

    ``urls`` holds the three ``RequestUrls`` fields; ``inference_time`` is reported once COMPLETED.
    A unit test keeps this equal to the model's output.
    """
    body: dict[str, Any] = {**urls, "status": status.value, "request_id": request_id}
    if status is JobStatus.IN_QUEUE:
        body["queue_position"] = queue_position
    body["logs"] = logs
    body["metrics"] = {"inference_time": inference_time} if status is JobStatus.COMPLETED else {}
    if error is not None:
        body["error"] = error
    if error_type is not None:
        body["error_type"] = error_type
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
