"""The same checkpoint gives the same image under every transformers the project allows (4.57 and 5.x).

The in-process side runs this process's transformers; the other side runs
:mod:`tests.unit.model.version_probe` in a subprocess of the other version's venv: the 4.57 venv
``make test`` builds (``.run/venv-transformers-4.57``) when this is 5.x, the project's ``.venv``
(5.x) when ``make test-transformers457`` runs these tests under 4.57. Both run on one thread, so
equal inputs give bit-equal outputs.

The checkpoints: the tiny 16x one as ``model.tiny`` writes it, and the same with its
``config.json`` as transformers 5's ``save_pretrained`` writes it (RoPE only as
``rope_parameters``). Before the loader mapped RoPE to the keys both versions read, transformers
4.57 ignored that key and ran theta 10000 instead of 1e6, silently: another image.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from model.pipeline import BitDancePipeline, GenerationRequest
from tests.unit.model.version_probe import GUIDANCE, PROMPT, SEED, SIZE, STEPS

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TRANSFORMERS_457_PYTHON = PROJECT_ROOT / ".run" / "venv-transformers-4.57" / "bin" / "python"
PROJECT_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
RUNNING_4 = transformers.__version__.startswith("4.")


def other_python() -> Path:
    """The python of the other transformers version; skips (fails in CI) when its venv is missing."""
    python, built_by = (PROJECT_PYTHON, "make install") if RUNNING_4 else (TRANSFORMERS_457_PYTHON, "make test")
    if not python.is_file():
        message = f"no {python} for the other transformers version: {built_by} builds it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def other_side(tiny16_dir: Path, tiny16_transformers5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    python = other_python()
    out = tmp_path_factory.mktemp("other-transformers") / "results.pt"
    command = [
        str(python),
        "-m",
        "tests.unit.model.version_probe",
        str(out),
        str(tiny16_dir),
        str(tiny16_transformers5_dir),
    ]
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    saved = torch.load(out)
    assert saved["transformers"].startswith("5." if RUNNING_4 else "4.57."), saved["transformers"]
    return saved


def generate_here(checkpoint: Path) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    pipe = BitDancePipeline.from_pretrained(checkpoint)
    request = GenerationRequest(PROMPT, SEED, GUIDANCE, 1)
    output = pipe.generate_batch([request], height=SIZE, width=SIZE, num_inference_steps=STEPS, return_tokens=True)
    return output.tokens, np.asarray(output.images[0][0]), pipe.llm.rotary_emb.inv_freq.cpu()


@pytest.mark.parametrize("form", ["as model.tiny writes it", "rope_parameters only (transformers 5)"])
def test_same_image_under_4_57_and_5(
    form: str, tiny16_dir: Path, tiny16_transformers5_dir: Path, other_side: dict
) -> None:
    checkpoint = tiny16_dir if form.startswith("as") else tiny16_transformers5_dir
    tokens, image, inv_freq = generate_here(checkpoint)
    theirs = other_side["results"][str(checkpoint)]
    versions = f"transformers {transformers.__version__} here, {other_side['transformers']} in the subprocess"
    assert torch.equal(inv_freq, theirs["inv_freq"]), versions
    agreement = (tokens == theirs["tokens"]).float().mean().item()
    assert agreement == 1.0, f"token agreement {agreement:.4f} ({versions})"
    assert np.array_equal(image, theirs["image"].numpy()), versions


def test_both_forms_give_the_same_image(other_side: dict, tiny16_dir: Path, tiny16_transformers5_dir: Path) -> None:
    """The RoPE a config names, not the keys it names it in, decides the image (theta 1e6 either way)."""
    results = other_side["results"]
    portable, transformers5 = results[str(tiny16_dir)], results[str(tiny16_transformers5_dir)]
    assert torch.equal(portable["tokens"], transformers5["tokens"])
    assert torch.equal(portable["image"], transformers5["image"])
    head_dim = 2 * len(portable["inv_freq"])
    assert float(portable["inv_freq"][1]) == pytest.approx(1e6 ** (-2 / head_dim), rel=1e-6)  # config.json's theta
