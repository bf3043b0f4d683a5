"""The simulated model: profile arithmetic, profile files, the step loop, pictures (no torch involved)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from core.settings import is_simulated_model
from model.encoding import encode_image
from model.exceptions import GenerationCancelled
from model.generation_request import GenerationRequest
from model.simulated.picture import render_picture
from model.simulated.profile import BUILT_IN, LatencyProfile, load_profile
from model.simulated.simulated_pipeline import NSFW_INFO_KEY, SimulatedFailure, SimulatedPipeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_default_profile_matches_its_stated_source() -> None:
    profile = load_profile("upstream-readme")
    assert "upstream README" in profile.source
    # ~12 s per 1024x1024 image at 50 steps with guidance on the 64x checkpoint, linear in steps
    assert profile.service_seconds(1024, 1024, 50, True, 1) == pytest.approx(12.0, rel=0.3)
    no_jitter = LatencyProfile.from_dict({**_as_dict(profile), "jitter": 0.0})
    assert no_jitter.service_seconds(1024, 1024, 50, True, 1) == pytest.approx(12.0)
    assert no_jitter.service_seconds(1024, 1024, 25, True, 1) == pytest.approx(6.0)
    assert no_jitter.service_seconds(1024, 1024, 50, False, 1) == pytest.approx(12.0 * 0.6)
    assert no_jitter.service_seconds(1024, 1024, 50, True, 3) == pytest.approx(12.0 * 1.5)
    assert no_jitter.service_seconds(1024, 1024, 50, True, 1, speed=4) == pytest.approx(3.0)
    sixteen = LatencyProfile.from_dict({**_as_dict(no_jitter), "variant": "16x"})
    assert sixteen.decoding_steps(1024, 1024) == 256 and sixteen.decoding_steps(512, 512) == 64
    assert sixteen.service_seconds(1024, 1024, 50, True, 1) == pytest.approx(36.0)


def _as_dict(profile: LatencyProfile) -> dict:
    return {
        "name": profile.name,
        "source": profile.source,
        "variant": profile.variant,
        "step_cost": {k: vars(v) for k, v in profile.step_cost.items()},
        "fixed_s": profile.fixed_s,
        "guidance_off_factor": profile.guidance_off_factor,
        "extra_image_factor": profile.extra_image_factor,
        "jitter": profile.jitter,
    }


def test_profile_from_json_file_and_bad_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"source": "measured on our H100", "step_cost": {"64x": {"base_s": 0.01}}}))
    profile = load_profile(path)
    assert profile.name == "mine" and profile.service_seconds(1024, 1024, 25, True, 1) == pytest.approx(0.64)
    assert load_profile("flat-2s").service_seconds(2048, 512, 100, False, 4) == 2.0
    with pytest.raises(ValueError, match="unknown simulated profile"):
        load_profile("no-such-profile")
    path.write_text(json.dumps({"step_cost": {"64x": {"base_s": 0.01}}}))
    with pytest.raises(ValueError, match="source"):
        load_profile(path)
    path.write_text(json.dumps({"source": "x", "stepcost": {}}))
    with pytest.raises(ValueError, match="unknown profile keys"):
        load_profile(path)
    assert set(BUILT_IN) >= {"upstream-readme", "flat-2s"}
    assert (
        is_simulated_model("simulated")
        and not is_simulated_model(Path("weights/tiny"))
        and not is_simulated_model(None)
    )


def test_pipeline_steps_progress_and_timing() -> None:
    clock = FakeClock()
    pipe = SimulatedPipeline(load_profile("flat-2s"), sleep=clock.sleep, clock=clock)
    seen: list[tuple[int, int]] = []
    requests = [GenerationRequest("a cat", seed=3, num_images=2), GenerationRequest("a dog", seed=4)]
    out = pipe.generate_batch(
        requests, height=1024, width=1024, num_inference_steps=25, progress=lambda s, t: seen.append((s, t))
    ).images
    assert seen == [(i, 64) for i in range(1, 65)]
    assert clock.now == pytest.approx(2.0)
    assert [len(images) for images in out] == [2, 1]
    assert all(im.size == (1024, 1024) for images in out for im in images)
    with pytest.raises(ValueError, match="not supported"):
        pipe.generate_batch(requests, height=512, width=512, num_inference_steps=25)


def test_pipeline_cancel_failure_and_nsfw_mark() -> None:
    clock = FakeClock()
    pipe = SimulatedPipeline(load_profile("flat-2s"), sleep=clock.sleep, clock=clock)
    checks = iter([False, False, True])
    with pytest.raises(GenerationCancelled):
        pipe.generate_batch([GenerationRequest("x", seed=1)], height=1024, width=1024, should_stop=lambda: next(checks))
    # steps of 31 ms: the wait wakes every 0.2 s (7 steps here), and reads the flag before each wait
    assert clock.now == pytest.approx(14 * 2.0 / 64)
    failing = SimulatedPipeline(load_profile("flat-2s"), failure_rate=1.0, sleep=clock.sleep, clock=clock)
    with pytest.raises(SimulatedFailure):
        failing.generate_batch([GenerationRequest("x", seed=1)], height=1024, width=1024)
    [[image]] = pipe.generate_batch([GenerationRequest("NSFW please", seed=1)], height=1024, width=1024).images
    assert image.info[NSFW_INFO_KEY] is True


def test_pictures_are_deterministic_and_distinct() -> None:
    a = render_picture("a red fox", 1, 0, 768, 1280)
    assert a.size == (768, 1280) and a.mode == "RGB"
    assert a.tobytes() == render_picture("a red fox", 1, 0, 768, 1280).tobytes()
    assert a.tobytes() != render_picture("a red fox", 2, 0, 768, 1280).tobytes()
    assert a.tobytes() != render_picture("a red fox", 1, 1, 768, 1280).tobytes()
    assert a.tobytes() != render_picture("a blue fox", 1, 0, 768, 1280).tobytes()


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG")])
def test_a_repeated_picture_is_encoded_once_and_stays_a_real_image(fmt: str, pil_format: str) -> None:
    clock = FakeClock()
    pipe = SimulatedPipeline(load_profile("flat-2s"), sleep=clock.sleep, clock=clock)

    def one(prompt: str, seed: int) -> Image.Image:
        [[image]] = pipe.generate_batch([GenerationRequest(prompt, seed=seed)], height=768, width=1280).images
        return image

    first, again, other = one("a red fox", 7), one("a red fox", 7), one("a red fox", 8)
    encoded = encode_image(first, fmt)
    assert encoded.data == encode_image(first, fmt).data
    assert encode_image(again, fmt).data is encoded.data  # the same request's picture: encoded once
    assert encode_image(other, fmt).data != encoded.data
    decoded = Image.open(io.BytesIO(encoded.data))
    assert decoded.format == pil_format and decoded.size == (1280, 768) == (encoded.width, encoded.height)
    assert decoded.convert("RGB").tobytes() == first.convert("RGB").tobytes() or fmt == "jpeg"
    first.paste((0, 0, 0), (0, 0, 1280, 768))  # a caller changing its image changes no later request's
    assert one("a red fox", 7).getpixel((0, 0)) != (0, 0, 0)
