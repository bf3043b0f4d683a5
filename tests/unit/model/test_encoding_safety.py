"""Image encoding and the safety checkers, shared by the worker and ``bitdance-generate``."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from model.encoding import data_uri, encode_image
from model.safety import NoSafetyChecker, OpenNsfwChecker, SimulatedSafetyChecker, build_safety_checker, redact


@pytest.mark.parametrize("fmt,pil_format", [("jpeg", "JPEG"), ("png", "PNG")])
def test_encoding_is_deterministic(fmt: str, pil_format: str) -> None:
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    first, second = encode_image(image, fmt), encode_image(image, fmt)
    assert first.data == second.data
    decoded = Image.open(io.BytesIO(first.data))
    assert decoded.format == pil_format and decoded.size == (64, 48)
    assert (first.width, first.height) == (64, 48)
    assert data_uri(first).startswith(f"data:{first.content_type};base64,")


def test_encoding_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="output_format"):
        encode_image(Image.new("RGB", (8, 8)), "gif")


def test_redact_replaces_flagged_with_black_of_same_size() -> None:
    images = [Image.new("RGB", (32, 16), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))]
    out = redact(images, [True, False])
    assert out[0].size == (32, 16) and out[0].getextrema() == ((0, 0), (0, 0), (0, 0))
    assert out[1] is images[1]


def test_open_nsfw_default_runs_offline() -> None:
    checker = OpenNsfwChecker(threshold=0.8)
    flags = checker.check([Image.new("RGB", (256, 256), (120, 140, 160))])
    assert flags == [False]


def test_build_safety_checker() -> None:
    assert isinstance(build_safety_checker("none"), NoSafetyChecker)
    assert isinstance(build_safety_checker("none", simulated=True), NoSafetyChecker)  # "none" wins
    assert isinstance(build_safety_checker("opennsfw", simulated=True), SimulatedSafetyChecker)
    assert isinstance(build_safety_checker("opennsfw", threshold=0.5), OpenNsfwChecker)
    with pytest.raises(ValueError, match="SAFETY_CHECKER_PATH"):
        build_safety_checker("diffusers")
