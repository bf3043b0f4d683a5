"""Domain errors with their HTTP code and fal ``error_type`` (rendered by ``server.error_handlers``).

Routes raise; they never build error JSON. Failed requests store a ``StoredError`` (code, body,
headers) in their record, and the result route replays it verbatim, as fal does. No FastAPI here:
the workers import these classes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-fal-request-id"


@dataclass(frozen=True)
class StoredError:
    """The exact response the result route gives for a failed request."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        detail = self.body.get("detail")
        return detail if isinstance(detail, str) else f"Invalid status code: {self.status_code}"

    @property
    def error_type(self) -> str:
        return str(self.body.get("error_type") or ("validation_error" if self.status_code == 422 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"status_code": self.status_code, "body": self.body, "headers": self.headers}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredError:
        return cls(int(data["status_code"]), dict(data["body"]), dict(data.get("headers") or {}))


class FalError(Exception):
    """Base of every error the API renders: ``{"detail": ..., "error_type": ...}``."""

    status_code: int = 500
    error_type: str | None = "internal_error"
    default_detail: str = "Internal server error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or self.default_detail
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    def to_stored(self) -> StoredError:
        body: dict[str, Any] = {"detail": self.detail}
        headers = dict(self.headers)
        if self.error_type:
            body["error_type"] = self.error_type
            headers["X-Fal-Error-Type"] = self.error_type
        return StoredError(self.status_code, body, headers)


class BadRequestError(FalError):
    status_code, error_type, default_detail = 400, "bad_request", "Bad request"


class RequestInProgressError(FalError):
    status_code, error_type, default_detail = 400, None, "Request is still in progress"


class AuthenticationError(FalError):
    status_code, error_type, default_detail = 401, None, "Missing or invalid credentials"


class RequestNotFoundError(FalError):
    status_code, error_type, default_detail = 404, None, "Request not found"


class EndpointNotFoundError(FalError):
    status_code, error_type, default_detail = 404, None, "Application not found"


class FileNotFoundError_(FalError):  # noqa: N801 - avoids shadowing the builtin
    status_code, error_type, default_detail = 404, None, "File not found"


class ConflictError(FalError):
    status_code, error_type, default_detail = 409, "bad_request", "Conflict"


class RequestHeaderTimeoutError(FalError):
    """A connection did not complete its request head in ``BITDANCE_HEADER_TIMEOUT_S`` (``server.http_limits``)."""

    status_code, error_type, default_detail = 408, "request_timeout", "Request header timeout"


class PayloadTooLargeError(FalError):
    status_code, error_type, default_detail = 413, "bad_request", "Request body too large"


class UnsupportedMediaTypeError(FalError):
    status_code, error_type, default_detail = 415, "bad_request", "Request body must be JSON"


class HeaderFieldsTooLargeError(FalError):
    """A request head over ``BITDANCE_MAX_HEADER_BYTES`` (``server.http_limits``)."""

    status_code, error_type, default_detail = 431, "bad_request", "Request header fields too large"


class QueueFullError(FalError):
    status_code, error_type, default_detail = 429, "runner_scheduling_failure", "Queue is full"


class ClientCancelledError(FalError):
    status_code, error_type, default_detail = 499, "client_cancelled", "Request cancelled"


class ClientDisconnectedError(FalError):
    status_code, error_type, default_detail = 499, "client_disconnected", "Client disconnected"


class RunnerServerError(FalError):
    status_code, error_type, default_detail = 500, "runner_server_error", "Generation failed"


class RunnerDisconnectedError(FalError):
    status_code, error_type, default_detail = (
        503,
        "runner_disconnected",
        "The worker running the request died",
    )


class ServiceUnavailableError(FalError):
    status_code, error_type, default_detail = 503, "runner_scheduling_failure", "Service unavailable"


class InsufficientStorageError(FalError):
    """The object store's disk (or quota) is full: nothing was stored, and nothing partial was kept."""

    status_code, error_type = 507, "insufficient_storage"
    default_detail = "Not enough storage space on the server: the file was not stored"


class ServerShuttingDownError(FalError):
    """A sync run still waiting when the API's shutdown grace period ended. The request itself goes on in
    the queue; 500 (not 503) and ``X-Fal-Retryable: false`` because a client retry would run it twice."""

    status_code, error_type = 500, "internal_error"
    default_detail = "The server is shutting down; the request continues in the queue"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"X-Fal-Retryable": "false"})


class RequestTimeoutError(FalError):
    """The request did not start before its ``x-fal-request-timeout`` deadline."""

    status_code, error_type = 504, "request_timeout"
    default_detail = "Request timed out before processing started"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"X-Fal-Request-Timeout-Type": "user", "X-Fal-Retryable": "false"})
