"""End-to-end behaviour of the pipeline on the tiny checkpoints, on the CPU in float32 and in bf16.

bf16 runs under bf16 autocast with the norms and the softmax in float32 (``model.precision``): the
arithmetic the pipeline has on CUDA, so these tests exercise the GPU's numeric path without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.exceptions import GenerationCancelled
from model.pipeline import BitDancePipeline, GenerationRequest

SIZE = (512, 512)
STEPS = 3


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def test_same_seed_same_images_and_other_seed_differs(any_pipe16: BitDancePipeline) -> None:
    first = pixels(any_pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=3))
    again = pixels(any_pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=3))
    other = pixels(any_pipe16.generate("a red fox", *SIZE, STEPS, 7.5, seed=4))
    assert first[0].shape == (512, 512, 3) and first[0].dtype == np.uint8
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_a_request_gets_the_same_images_alone_or_in_a_batch(any_pipe16: BitDancePipeline) -> None:
    requests = [
        GenerationRequest("a red fox", seed=11, guidance_scale=7.5, num_images=1),
        GenerationRequest("a much longer prompt: an owl reading a book in a quiet forest", 12, 3.0, 2),
        GenerationRequest("cat", seed=13, guidance_scale=1.0, num_images=1),
    ]
    height, width = SIZE
    batched = any_pipe16.generate_batch(requests, height=height, width=width, num_inference_steps=STEPS).images
    assert [len(images) for images in batched] == [1, 2, 1]
    for request, images in zip(requests, batched, strict=True):
        alone = any_pipe16.generate_batch([request], height=height, width=width, num_inference_steps=STEPS).images[0]
        for a, b in zip(pixels(alone), pixels(images), strict=True):
            assert np.array_equal(a, b)


def test_guidance_off_at_and_below_one(any_pipe16: BitDancePipeline) -> None:
    at_one = pixels(any_pipe16.generate("a boat", *SIZE, STEPS, 1.0, seed=5))
    below = pixels(any_pipe16.generate("a boat", *SIZE, STEPS, 0.5, seed=5))
    guided = pixels(any_pipe16.generate("a boat", *SIZE, STEPS, 1.5, seed=5))
    assert np.array_equal(at_one[0], below[0])
    assert not np.array_equal(at_one[0], guided[0])


def test_images_of_one_request_differ(any_pipe16: BitDancePipeline) -> None:
    images = pixels(any_pipe16.generate("a lamp", *SIZE, STEPS, 7.5, seed=8, num_images=2))
    assert len(images) == 2 and not np.array_equal(images[0], images[1])


def test_progress_once_per_step_and_stop_within_one_step(any_pipe16: BitDancePipeline) -> None:
    seen: list[tuple[int, int]] = []
    any_pipe16.generate("a lamp", *SIZE, STEPS, 7.5, seed=1, progress=lambda s, t: seen.append((s, t)))
    total = (512 // 16) ** 2 // 16
    assert seen == [(s, total) for s in range(1, total + 1)]

    steps_done: list[int] = []
    with pytest.raises(GenerationCancelled):
        any_pipe16.generate(
            "a lamp", *SIZE, STEPS, 7.5, seed=1,
            progress=lambda s, t: steps_done.append(s), should_stop=lambda: len(steps_done) >= 3,
        )  # fmt: skip
    assert steps_done == [1, 2, 3]


def test_unsupported_size_and_bad_arguments(any_pipe16: BitDancePipeline) -> None:
    with pytest.raises(ValueError, match="not supported"):
        any_pipe16.generate("x", 500, 500, STEPS)
    with pytest.raises(ValueError, match="num_inference_steps"):
        any_pipe16.generate("x", *SIZE, 0)
    with pytest.raises(ValueError, match="num_images"):
        any_pipe16.generate("x", *SIZE, STEPS, num_images=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_64x_checkpoint_generates_1024_and_rejects_512(tiny64_dir: Path, dtype: torch.dtype) -> None:
    pipe = BitDancePipeline.from_pretrained(tiny64_dir, device="cpu", dtype=dtype)
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
