"""Input bounds and fal's 422 body, through the real FastAPI app (no Redis needed for rejections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from core.schemas import BitDanceInput, BitDanceOutput

from .asgi import call, make_app


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return make_app(tmp_path)


BAD_FIELDS = [
    ({}, ["body", "prompt"], "missing"),
    ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
    ({"prompt": "   "}, ["body", "prompt"], "value_error"),
    ({"prompt": "x" * 10_001}, ["body", "prompt"], "string_too_long"),
    ({"prompt": "p", "image_size": "huge"}, ["body", "image_size"], "literal_error"),
    ({"prompt": "p", "image_size": 5}, ["body", "image_size"], "model_type"),
    (
        {"prompt": "p", "image_size": {"width": 100, "height": 512}},
        ["body", "image_size", "width"],
        "greater_than_equal",
    ),
    (
        {"prompt": "p", "image_size": {"width": 512, "height": 4096}},
        ["body", "image_size", "height"],
        "less_than_equal",
    ),
    ({"prompt": "p", "num_inference_steps": 9}, ["body", "num_inference_steps"], "greater_than_equal"),
    ({"prompt": "p", "num_inference_steps": 101}, ["body", "num_inference_steps"], "less_than_equal"),
    ({"prompt": "p", "guidance_scale": 0.5}, ["body", "guidance_scale"], "greater_than_equal"),
    ({"prompt": "p", "guidance_scale": 15.5}, ["body", "guidance_scale"], "less_than_equal"),
    ({"prompt": "p", "seed": -1}, ["body", "seed"], "greater_than_equal"),
    ({"prompt": "p", "num_images": 0}, ["body", "num_images"], "greater_than_equal"),
    ({"prompt": "p", "num_images": 5}, ["body", "num_images"], "less_than_equal"),
    ({"prompt": "p", "enable_safety_checker": "maybe"}, ["body", "enable_safety_checker"], "bool_parsing"),
    ({"prompt": "p", "output_format": "webp"}, ["body", "output_format"], "literal_error"),
    ({"prompt": "p", "sync_mode": "sometimes"}, ["body", "sync_mode"], "bool_parsing"),
]


@pytest.mark.parametrize("body,loc,kind", BAD_FIELDS)
def test_bad_field_gives_fal_422(app: FastAPI, body: dict[str, Any], loc: list[str], kind: str) -> None:
    response = call(app, "POST", "/queue/fal-ai/bitdance", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc and detail[0]["type"] == kind and detail[0]["msg"]
    assert response.headers["x-fal-request-id"]


def test_malformed_json_is_422_not_500(app: FastAPI) -> None:
    headers = {"Content-Type": "application/json"}
    response = call(app, "POST", "/queue/fal-ai/bitdance", content=b"{not json", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_defaults_match_fal() -> None:
    value = BitDanceInput(prompt="p")
    assert value.image_size == "square_hd" and value.num_inference_steps == 25
    assert value.guidance_scale == 7.5 and value.num_images == 1 and value.seed is None
    assert value.enable_safety_checker is True and value.output_format == "jpeg" and value.sync_mode is False
    assert BitDanceInput(prompt="p", image_size={"width": 600, "height": 400}).image_size_value() == {
        "width": 600,
        "height": 400,
    }


def test_output_schema_fields() -> None:
    fields = set(BitDanceOutput.model_json_schema()["properties"])
    assert fields == {"images", "seed", "has_nsfw_concepts", "prompt"}
    image = BitDanceOutput.model_json_schema()["$defs"]["ImageFile"]["properties"]
    assert set(image) == {"url", "content_type", "file_name", "file_size", "width", "height"}
