"""fal's object lifecycle headers, parsed and validated once at the API.

``x-fal-object-lifecycle-preference`` (queue and run requests: applies to the generated files) and
``x-fal-object-lifecycle`` (uploads) carry JSON such as ``{"expiration_duration_seconds": 3600}``
(fal also defines ``initial_acl``, accepted and ignored here: file URLs are capabilities). A value
that is not such an object is a 422 naming the header; what the API stores on the record is the
parsed ``ObjectLifecycle``, so workers never see the raw header.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.error_handlers import field_error

LIFECYCLE_PREFERENCE_HEADER = "x-fal-object-lifecycle-preference"
UPLOAD_LIFECYCLE_HEADER = "x-fal-object-lifecycle"
MAX_HEADER_CHARS = 4096
MAX_EXPIRATION_S = 100 * 365 * 24 * 3600  # longer than any deployment keeps a file


class ObjectLifecycle(BaseModel):
    """The validated lifecycle preference."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    expiration_duration_seconds: int | None = Field(
        default=None, ge=1, le=MAX_EXPIRATION_S, description="Seconds until the stored files expire."
    )

    def to_record(self) -> dict[str, Any] | None:
        """What the request record keeps (None when the header asked for nothing)."""
        stored = self.model_dump(exclude_none=True)
        return stored or None


def parse_object_lifecycle(value: str | None, header: str = LIFECYCLE_PREFERENCE_HEADER) -> ObjectLifecycle | None:
    """The header's parsed value; None when absent or blank; ``RequestValidationError`` when malformed."""
    if value is None or not value.strip():
        return None
    loc = ("header", header)
    if len(value) > MAX_HEADER_CHARS:
        raise field_error(loc, f"Header should have at most {MAX_HEADER_CHARS} characters", "string_too_long")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise field_error(loc, "Header should be a JSON object", "json_invalid") from None
    if not isinstance(data, dict):
        raise field_error(loc, "Header should be a JSON object", "dict_type")
    try:
        return ObjectLifecycle.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise field_error((*loc, *first["loc"]), first["msg"], first["type"]) from None
