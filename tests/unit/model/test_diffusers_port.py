"""A checkpoint converted by the diffusers port's own converter loads and gives the native images.

Opt-in: runs only when ``BITDANCE_DIFFUSERS_REPO`` points at a checkout of github.com/Bili-Sakura/BitDance
(the port that publishes ``BiliSakura/BitDance-14B-*-diffusers``). Its converter,
``scripts/convert_bitdance_to_diffusers.py``, needs ``diffusers`` and ``einops`` (and upstream pins
transformers 4.57): ``BITDANCE_DIFFUSERS_PYTHON`` names a Python that has them (default: this one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint.layout import Layout
from model.checkpoint.verification import verify_checkpoint
from model.pipeline import BitDancePipeline

REPO_ENV = "BITDANCE_DIFFUSERS_REPO"
PYTHON_ENV = "BITDANCE_DIFFUSERS_PYTHON"

pytestmark = pytest.mark.skipif(not os.environ.get(REPO_ENV), reason=f"set {REPO_ENV} to a checkout of the port")


@pytest.fixture(scope="module")
def converted16(tiny16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = Path(os.environ[REPO_ENV])
    out = tmp_path_factory.mktemp("port16") / "BitDance-tiny-16x-diffusers"
    python = os.environ.get(PYTHON_ENV, sys.executable)
    command = [
        python,
        str(repo / "scripts" / "convert_bitdance_to_diffusers.py"),
        "--source_model_path",
        str(tiny16_dir),
        "--output_path",
        str(out),
        "--torch_dtype",
        "float32",  # the tiny weights are float32: a lossless conversion, as bf16 -> bf16 is for the 14B
    ]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_port_output_verifies(converted16: Path) -> None:
    report = verify_checkpoint(converted16)
    assert report.sound, report.problems
    assert report.layout is Layout.DIFFUSERS and report.parallel_num == 16


def test_port_output_gives_the_native_images(converted16: Path, pipe16: BitDancePipeline) -> None:
    converted = BitDancePipeline.from_pretrained(converted16)
    for guidance, count in ((7.5, 1), (1.0, 2)):
        ours = pipe16.generate("a red fox in the snow", 512, 512, 4, guidance, seed=5, num_images=count)
        theirs = converted.generate("a red fox in the snow", 512, 512, 4, guidance, seed=5, num_images=count)
        assert len(ours) == len(theirs) == count
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
