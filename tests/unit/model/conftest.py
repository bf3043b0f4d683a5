"""Tiny random checkpoints written once per session, and pipelines loaded from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint.tiny_checkpoint import write_checkpoint
from model.pipeline import BitDancePipeline


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """Run the tiny models on one thread, as the workers do (BITDANCE_TORCH_THREADS=1).

    The tiny models' kernels are too small to gain from a second thread, and OpenMP's spinning
    makes two threads many times slower whenever another process wants the same cores.
    """
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny16"), parallel_num=16)


@pytest.fixture(scope="session")
def tiny64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny64"), parallel_num=64)


@pytest.fixture(scope="session")
def tiny16_diffusers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as ``tiny16_dir``, in the diffusers layout, every component in two shards."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny16-diffusers"), parallel_num=16, layout="diffusers", shards=2)


@pytest.fixture(scope="session")
def tiny16_transformers5_dir(tiny16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny16_dir`` with its ``config.json`` as transformers 5's ``save_pretrained`` writes it: RoPE only as
    ``rope_parameters`` (what ``model.tiny`` wrote before it rewrote the file; 4.57 ignores that key)."""
    target = tmp_path_factory.mktemp("tiny16-transformers5") / "ckpt"
    shutil.copytree(tiny16_dir, target)
    config = {k: v for k, v in json.loads((target / "config.json").read_text()).items() if not k.startswith("rope_")}
    config["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}  # model.tiny's RoPE
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return target


@pytest.fixture(scope="session")
def pipe16(tiny16_dir: Path) -> BitDancePipeline:
    return BitDancePipeline.from_pretrained(tiny16_dir)


@pytest.fixture(scope="session")
def pipe16_bf16(tiny16_dir: Path) -> BitDancePipeline:
    """bf16 weights on the CPU, under bf16 autocast: the arithmetic the pipeline has on CUDA."""
    return BitDancePipeline.from_pretrained(tiny16_dir, device="cpu", dtype=torch.bfloat16)


@pytest.fixture(params=["float32", "bfloat16"])
def any_pipe16(request: pytest.FixtureRequest) -> BitDancePipeline:
    """The tiny 16x pipeline in float32 (the CPU's default) and in bf16 (the GPU's numeric path)."""
    return request.getfixturevalue("pipe16" if request.param == "float32" else "pipe16_bf16")
