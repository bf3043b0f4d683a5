"""Same checkpoint and seed, same image as the official code in its own environment (transformers 4.57).

Opt-in: runs only when ``BITDANCE_OFFICIAL_REPO`` points at an extracted checkout of
github.com/shallowdream204/BitDance. The official side runs there through
:class:`bench.official.client.OfficialPipeline`: a subprocess in the environment
:mod:`bench.official.environment` prepares (upstream's pins, transformers 4.57.0; pip installs it
from the package index on first use, about 1.5 minutes, then reuses it). It cannot run in CI: CI
has no copy of the upstream code (it is not a package, and no repository host can be reached), and
the project does not ship third-party code. The always-on guard is ``test_transformers_versions.py``.

Unlike ``test_official_parity.py``, which imports the official code into this process (so this
environment needs transformers 4.57 and einops), this runs from the project's own environment,
whatever its transformers: the comparison that gave 70 % token agreement until ``model.tiny``
wrote RoPE in the keys transformers 4.57 reads (``rope_theta``; it ignored transformers 5's
``rope_parameters`` and ran theta 10000). Both sides run on one thread, so the comparison is exact.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.official.client import OFFICIAL_ENV, OfficialPipeline
from model.pipeline import BitDancePipeline, GenerationRequest

pytestmark = pytest.mark.skipif(
    not os.environ.get(OFFICIAL_ENV), reason=f"set {OFFICIAL_ENV} to an official BitDance checkout"
)

SIZE, STEPS, GUIDANCE, SEED = 512, 10, 7.5, 42
PROMPT = "a red fox sitting in a snowy forest at sunset"


@pytest.fixture(scope="module")
def official() -> Iterator[OfficialPipeline]:
    with OfficialPipeline(os.environ[OFFICIAL_ENV], log=lambda line: print(line, file=sys.stderr)) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def official_result(official: OfficialPipeline, tiny16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The official code on the tiny 16x checkpoint as ``model.tiny`` writes it."""
    official.load(tiny16_dir, device="cpu", threads=1)
    save = tmp_path_factory.mktemp("official") / "result.pt"
    official.generate(PROMPT, SIZE, SIZE, STEPS, GUIDANCE, SEED, save=save)
    return torch.load(save)


def ours(checkpoint: Path) -> tuple[torch.Tensor, np.ndarray]:
    pipe = BitDancePipeline.from_pretrained(checkpoint)
    request = GenerationRequest(PROMPT, SEED, GUIDANCE, 1)
    output = pipe.generate_batch([request], height=SIZE, width=SIZE, num_inference_steps=STEPS, return_tokens=True)
    return output.tokens, np.asarray(output.images[0][0])


def test_same_tokens_and_image_as_the_official_environment(official_result: dict, tiny16_dir: Path) -> None:
    tokens, image = ours(tiny16_dir)
    agreement = (tokens == official_result["tokens"]).float().mean().item()
    assert agreement == 1.0, f"token agreement {agreement:.4f}"
    assert np.array_equal(image, official_result["images"][0].numpy())


def test_a_transformers5_config_gives_the_official_image(official_result: dict, tiny16_transformers5_dir: Path) -> None:
    """Ours reads RoPE from ``rope_parameters`` as the config means it (theta 1e6), under any transformers.

    (Upstream's own code, on transformers 4.57, still misreads such a file as theta 10000: the
    official side therefore runs on the file ``model.tiny`` writes, which holds the same RoPE.)
    """
    tokens, image = ours(tiny16_transformers5_dir)
    assert torch.equal(tokens, official_result["tokens"])
    assert np.array_equal(image, official_result["images"][0].numpy())
