"""End-to-end behaviour of the pipeline on the tiny checkpoints (CPU, float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.exceptions import GenerationCancelled
from model.pipeline import BitDancePipeline, GenerationRequest

SIZE = (512, 512)
STEPS = 3


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def test_same_seed_same_images_and_other_seed_differs(pipe16: BitDancePipeline) -> None:
    first = pixels(pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=3))
    again = pixels(pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=3))
    other = pixels(pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=4))
    assert first[0].shape == (512, 512, 3) and first[0].dtype == np.uint8
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_a_request_gets_the_same_images_alone_or_in_a_batch(pipe16: BitDancePipeline) -> None:
    requests = [
        GenerationRequest("a red fox", seed=11, guidance_scale=7.5, num_images=1),
        GenerationRequest("a much longer prompt: an owl reading a book in a quiet forest", 12, 3.0, 2),
        GenerationRequest("cat", seed=13, guidance_scale=1.0, num_images=1),
    ]
    height, width = SIZE
    batched = pipe16.generate_batch(requests, height=height, width=width, num_inference_steps=STEPS).images
    assert [len(images) for images in batched] == [1, 2, 1]
    for request, images in zip(requests, batched, strict=True):
        alone = pipe16.generate_batch([request], height=height, width=width, num_inference_steps=STEPS).images[0]
        for a, b in zip(pixels(alone), pixels(images), strict=True):
            assert np.array_equal(a, b)


def test_guidance_off_at_and_below_one(pipe16: BitDancePipeline) -> None:
    at_one = pixels(pipe16.generate("a boat", *SIZE, STEPS, 1.0, seed=5))
    below = pixels(pipe16.generate("a boat", *SIZE, STEPS, 0.5, seed=5))
    guided = pixels(pipe16.generate("a boat", *SIZE, STEPS, 1.5, seed=5))
    assert np.array_equal(at_one[0], below[0])
    assert not np.array_equal(at_one[0], guided[0])


def test_images_of_one_request_differ(pipe16: BitDancePipeline) -> None:
    images = pixels(pipe16.generate("a lamp", *SIZE, STEPS, 7.5, seed=8, num_images=2))
    assert len(images) == 2 and not np.array_equal(images[0], images[1])


def test_progress_once_per_step_and_stop_within_one_step(pipe16: BitDancePipeline) -> None:
    seen: list[tuple[int, int]] = []
    pipe16.generate("a lamp", *SIZE, STEPS, 7.5, seed=1, progress=lambda s, t: seen.append((s, t)))
    total = (512 // 16) ** 2 // 16
    assert seen == [(s, total) for s in range(1, total + 1)]

    steps_done: list[int] = []
    with pytest.raises(GenerationCancelled):
        pipe16.generate(
            "a lamp", *SIZE, STEPS, 7.5, seed=1,
            progress=lambda s, t: steps_done.append(s), should_stop=lambda: len(steps_done) >= 3,
        )  # fmt: skip
    assert steps_done == [1, 2, 3]


def test_unsupported_size_and_bad_arguments(pipe16: BitDancePipeline) -> None:
    with pytest.raises(ValueError, match="not supported"):
        pipe16.generate("x", 500, 500, STEPS)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe16.generate("x", *SIZE, 0)
    with pytest.raises(ValueError, match="num_images"):
        pipe16.generate("x", *SIZE, STEPS, num_images=0)


def test_64x_checkpoint_generates_1024_and_rejects_512(tiny64_dir: Path) -> None:
    pipe = BitDancePipeline.from_pretrained(tiny64_dir)
    assert pipe.parallel_num == 64 and (512, 512) not in pipe.supported_sizes()
    with pytest.raises(ValueError):
        pipe.generate("x", 512, 512, STEPS)
    output = pipe.generate_batch(
        [GenerationRequest("a fox", seed=2)], height=1024, width=1024, num_inference_steps=2, return_tokens=True
    )
    tokens = output.tokens
    assert tokens is not None and output.images[0][0].size == (1024, 1024)
    assert tokens.shape == (1, 64 * 64, 32)
    assert set(tokens.unique().tolist()) <= {-1.0, 1.0}
