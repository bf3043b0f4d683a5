"""Progress throttling and the stop check, image encoding, and the safety checkers."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import redis
from PIL import Image

from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker.encoding import data_uri, encode_image
from worker.progress import ProgressTracker
from worker.safety import NoSafetyChecker, OpenNsfwChecker, build_safety_checker, redact


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_each_step_and_throttles(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    clock = Clock()
    tracker = ProgressTracker(store, "rid", num_inference_steps=25, interval_s=1.0, clock=clock)
    for patch in range(1, 11):
        clock.now += 0.25
        tracker.on_patch(patch, 10)
    logged = store.client.lrange(store.keys.logs("rid"), 0, -1)
    # first and last always, plus one per elapsed second in between
    assert len(logged) == 4
    assert '"patch 1/10, 25 sampling steps each"' in logged[0]
    assert '"patch 10/10, 25 sampling steps each; decoding to pixels"' in logged[-1]
    assert '"source":"USER"' in logged[0] and '"level":"INFO"' in logged[0] and '"timestamp"' in logged[0]
    assert tracker.should_stop() is False
    store.client.hset(store.keys.record("rid"), "cancel", "1")
    assert tracker.should_stop() is True


def test_progress_survives_redis_errors(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.1), settings)
    tracker = ProgressTracker(store, "rid", num_inference_steps=10)
    tracker.on_patch(1, 2)  # no exception
    assert tracker.should_stop() is False


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


def test_build_safety_checker(make_settings: Callable[..., Settings]) -> None:
    assert isinstance(build_safety_checker(make_settings(safety_checker="none")), NoSafetyChecker)
    with pytest.raises(ValueError, match="SAFETY_CHECKER_PATH"):
        build_safety_checker(make_settings(safety_checker="diffusers"))
