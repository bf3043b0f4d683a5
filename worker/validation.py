"""Worker-side input validation, in one place: a record's stored input read back as the endpoint's
schema (``BitDanceInput``) and resolved to what the loaded checkpoint generates.

Used for the request a worker starts and for the queued requests it considers batching with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.errors import StoredError
from core.schemas import BitDanceInput
from model.resolutions import resolve_image_size


@dataclass(frozen=True)
class GenerationShape:
    """What the requests of one generation must share."""

    height: int
    width: int
    num_inference_steps: int


@dataclass(frozen=True)
class ValidatedInput:
    payload: BitDanceInput
    shape: GenerationShape


def validate_input(raw: dict[str, Any], parallel_num: int) -> ValidatedInput:
    """The input as the schema reads it, and its size snapped for a checkpoint of ``parallel_num``.

    Raises pydantic's ``ValidationError`` for input the schema rejects (see ``validation_error``) and
    ``ValueError`` for a size the checkpoint cannot make.
    """
    payload = BitDanceInput.model_validate(raw)
    height, width = resolve_image_size(payload.image_size_value(), parallel_num)
    return ValidatedInput(payload, GenerationShape(height, width, payload.num_inference_steps))


def validation_error(exc: ValidationError) -> StoredError:
    """fal's 422 body for input the schema rejects, located under ``body`` as the API's would be."""
    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    return StoredError(422, {"detail": [{**e, "loc": ["body", *e["loc"]]} for e in detail]})
