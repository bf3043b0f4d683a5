"""bf16 on the CPU computes as on CUDA: matrix products in bf16, norms and softmax in float32.

CUDA autocast runs ``layer_norm``, ``group_norm`` and ``softmax`` in float32; CPU autocast keeps them
in bf16. ``model.precision`` makes the float32 explicit, which must change nothing in float32 (the
same bits as the plain modules) and keep the checkpoints' parameter names.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch import nn

from model.pipeline import BitDancePipeline
from model.precision import Float32GroupNorm, Float32LayerNorm, autocast, float32_softmax


def test_the_float32_ops_are_the_plain_ops_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 8, 8, generator=generator)
    tokens = torch.randn(3, 7, 64, generator=generator)
    for ours, plain, data in (
        (Float32GroupNorm(32, 64, eps=1e-6), nn.GroupNorm(32, 64, eps=1e-6), x),
        (Float32GroupNorm(32, 64, eps=1e-6, affine=False), nn.GroupNorm(32, 64, eps=1e-6, affine=False), x),
        (Float32LayerNorm(64, eps=1e-6), nn.LayerNorm(64, eps=1e-6), tokens),
        (Float32LayerNorm(64, eps=1e-6, elementwise_affine=False), nn.LayerNorm(64, elementwise_affine=False), tokens),
    ):
        for param in plain.parameters():
            nn.init.normal_(param, generator=generator)
        ours.load_state_dict(plain.state_dict())  # the same parameter names
        assert list(ours.state_dict()) == list(plain.state_dict())
        plain.eps = ours.eps
        assert torch.equal(ours(data), plain(data))
    assert torch.equal(float32_softmax(tokens, -1), torch.softmax(tokens, -1))


def test_under_cpu_autocast_the_norms_and_softmax_give_float32() -> None:
    x = torch.randn(2, 64, 4, 4, dtype=torch.bfloat16)
    tokens = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    norm, layer_norm = Float32GroupNorm(32, 64).to(torch.bfloat16), Float32LayerNorm(64).to(torch.bfloat16)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert nn.GroupNorm(32, 64).to(torch.bfloat16)(x).dtype == torch.bfloat16  # what CPU autocast does alone
        assert norm(x).dtype == torch.float32 and layer_norm(tokens).dtype == torch.float32
        assert float32_softmax(tokens, -1).dtype == torch.float32
        assert nn.Linear(64, 8)(tokens.float()).dtype == torch.bfloat16  # matrix products still bf16


def test_autocast_only_for_bf16_on_the_cpu() -> None:
    with autocast(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_dtype_flow_of_a_generation(pipe16: BitDancePipeline, pipe16_bf16: BitDancePipeline, dtype) -> None:  # type: ignore[no-untyped-def]
    """Every module's output dtype during a generation: in bf16, what CUDA autocast gives them."""
    pipe = pipe16 if dtype == torch.float32 else pipe16_bf16
    seen: dict[str, set[torch.dtype]] = defaultdict(set)

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            seen[type(module).__name__].add(output.dtype)

    modules = [m for part in (pipe.llm, pipe.head, pipe.projector, pipe.autoencoder) for m in part.modules()]
    handles = [m.register_forward_hook(record) for m in modules]
    try:
        pipe.generate("a red fox", 512, 512, num_inference_steps=2, guidance_scale=7.5, seed=1)
    finally:
        for handle in handles:
            handle.remove()
    compute = {dtype}
    assert seen["Linear"] == compute and seen["Conv2d"] == compute
    assert seen["Float32LayerNorm"] == seen["Float32GroupNorm"] == {torch.float32}
    assert {p.dtype for part in (pipe.llm, pipe.head, pipe.autoencoder) for p in part.parameters()} == compute
