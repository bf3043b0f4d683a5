"""Worker-side input validation and the seed policy, each in one place."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.schemas import SEED_MAX
from model.seeds import MAX_SEED, RANDOM_SEED_RANGE, check_seed, resolve_seed
from worker.validation import GenerationShape, validate_input, validation_error


def test_input_resolves_to_the_checkpoints_size_and_step_count() -> None:
    validated = validate_input({"prompt": "a fox", "image_size": "square", "num_inference_steps": 12}, 16)
    assert validated.payload.prompt == "a fox"
    assert validated.shape == GenerationShape(512, 512, 12)


def test_bad_input_is_fals_422_located_in_the_body() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_input({"prompt": "a fox", "num_images": 9}, 16)
    error = validation_error(caught.value)
    assert error.status_code == 422
    assert [item["loc"] for item in error.body["detail"]] == [["body", "num_images"]]


def test_the_api_bound_on_seed_is_the_models() -> None:
    assert SEED_MAX == MAX_SEED
    check_seed(MAX_SEED)
    with pytest.raises(ValueError, match="seed"):
        check_seed(MAX_SEED + 1)


def test_a_given_seed_is_kept_and_a_missing_one_drawn_in_range() -> None:
    assert resolve_seed(7) == 7
    drawn = {resolve_seed(None) for _ in range(20)}
    assert all(0 <= seed < RANDOM_SEED_RANGE for seed in drawn) and len(drawn) > 1
