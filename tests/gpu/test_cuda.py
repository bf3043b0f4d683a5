"""The CUDA path: bf16 weights under autocast, noise from device generators, batching, fp8. Needs a GPU.

Skipped where ``torch.cuda.is_available()`` is false (CI and the development machines have no GPU).
On a GPU machine: ``.venv/bin/python -m pytest -q tests/gpu`` (with a CUDA build of torch), then
``make bench-model`` for the speed figures.

The CPU runs the same numeric path when the weights are bf16 (``model.precision``: bf16 autocast,
norms and softmax in float32), and ``tests/unit/model`` runs the pipeline tests that way, so the
dtype flow tested here is tested without a GPU too; the kernels differ (cuBLAS, flash attention),
so CPU and GPU agree in dtypes, not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.attention import FLASH_ATTN
from model.checkpoint.configs import read_configs
from model.checkpoint.memory_plan import build_plan
from model.checkpoint.tiny_checkpoint import write_checkpoint
from model.pipeline import BitDancePipeline, GenerationRequest
from model.quantization import Fp8Linear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cuda_pipe(tmp_path_factory: pytest.TempPathFactory) -> BitDancePipeline:
    path: Path = write_checkpoint(tmp_path_factory.mktemp("tiny64-cuda"), parallel_num=64)
    return BitDancePipeline.from_pretrained(path, device="cuda")


def test_weights_load_on_the_gpu_in_bfloat16(cuda_pipe: BitDancePipeline) -> None:
    assert cuda_pipe.dtype == torch.bfloat16
    for module in (cuda_pipe.llm, cuda_pipe.head, cuda_pipe.projector, cuda_pipe.autoencoder):
        for name, param in module.named_parameters():
            assert param.is_cuda and param.dtype == torch.bfloat16, name


def test_device_generator_draws_the_default_generators_stream() -> None:
    """Upstream seeds globally and draws with ``torch.randn(..., device='cuda')``; we use a generator per request."""
    torch.manual_seed(1234)
    upstream = [torch.randn(2, 64, 32, device="cuda") for _ in range(3)]
    generator = torch.Generator(device="cuda").manual_seed(1234)
    ours = [torch.randn(2, 64, 32, device="cuda", generator=generator) for _ in range(3)]
    for a, b in zip(upstream, ours, strict=True):
        assert torch.equal(a, b)


def test_generates_full_size_images_deterministically(cuda_pipe: BitDancePipeline) -> None:
    first = cuda_pipe.generate("a red fox in the snow", 1024, 1024, num_inference_steps=4, seed=5)
    again = cuda_pipe.generate("a red fox in the snow", 1024, 1024, num_inference_steps=4, seed=5)
    assert first[0].size == (1024, 1024)
    pixels = np.asarray(first[0])
    assert pixels.std() > 0
    assert np.array_equal(pixels, np.asarray(again[0]))


def tokens_of(pipe: BitDancePipeline, requests: list[GenerationRequest], num_inference_steps: int) -> torch.Tensor:
    output = pipe.generate_batch(
        requests, height=1024, width=1024, num_inference_steps=num_inference_steps, return_tokens=True
    )
    assert output.tokens is not None
    return output.tokens


def test_a_request_gets_the_same_tokens_alone_or_in_a_batch(cuda_pipe: BitDancePipeline) -> None:
    target = GenerationRequest("a lighthouse on a cliff at night", seed=21, guidance_scale=7.5)
    others = [
        GenerationRequest("cat", seed=22, guidance_scale=3.0, num_images=2),
        GenerationRequest("a much longer prompt: an owl reading a book in a quiet forest", seed=23),
    ]
    alone = tokens_of(cuda_pipe, [target], 4)
    batched = tokens_of(cuda_pipe, [*others, target], 4)
    agreement = (batched[-1:] == alone).float().mean().item()
    assert agreement == 1.0, f"only {agreement:.4%} of the tokens agree"


@pytest.mark.skipif(FLASH_ATTN is None, reason="flash-attn is not installed")
def test_flash_attn_path_runs(cuda_pipe: BitDancePipeline) -> None:
    tokens = tokens_of(cuda_pipe, [GenerationRequest("a fox", seed=1)], 2)
    assert tokens.shape == (1, 4096, 32)
    assert set(tokens.unique().tolist()) <= {-1.0, 1.0}


@pytest.fixture(scope="module")
def cuda_fp8_pipe(tmp_path_factory: pytest.TempPathFactory) -> BitDancePipeline:
    path: Path = write_checkpoint(tmp_path_factory.mktemp("tiny64-cuda-fp8"), parallel_num=64)
    return BitDancePipeline.from_pretrained(path, device="cuda", quantization="fp8")


def test_fp8_weights_on_the_gpu_take_what_the_plan_says(cuda_fp8_pipe: BitDancePipeline) -> None:
    layers = [m for m in cuda_fp8_pipe.llm.modules() if isinstance(m, Fp8Linear)]
    assert layers and all(m.weight.is_cuda and m.weight.dtype == torch.float8_e4m3fn for m in layers)
    modules = (cuda_fp8_pipe.llm, cuda_fp8_pipe.head, cuda_fp8_pipe.autoencoder, cuda_fp8_pipe.projector)
    held = sum(t.nbytes for module in modules for t in module.state_dict().values())
    configs = read_configs(cuda_fp8_pipe.identity.path)
    assert held == build_plan(configs, "cuda", batches=(1,), quantization="fp8").bytes["total"]


def test_fp8_generates_deterministically_and_batch_invariant(cuda_fp8_pipe: BitDancePipeline) -> None:
    target = GenerationRequest("a lighthouse on a cliff at night", seed=21, guidance_scale=7.5)
    alone = tokens_of(cuda_fp8_pipe, [target], 4)
    again = tokens_of(cuda_fp8_pipe, [target], 4)
    batched = tokens_of(cuda_fp8_pipe, [GenerationRequest("cat", seed=22, num_images=2), target], 4)
    assert torch.equal(alone, again)
    agreement = (batched[-1:] == alone).float().mean().item()
    assert agreement == 1.0, f"only {agreement:.4%} of the tokens agree"
