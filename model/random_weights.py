"""Random weights that two processes can rebuild identically, without files: keyed by checkpoint name.

Each tensor is drawn from its own generator, seeded from the benchmark's seed and the tensor's name
in the native checkpoint (``model.layers.0.mlp.up_proj.weight``, ``net.res_blocks.0.w1.weight``,
``decoder.conv_in.weight``, ``fc1.weight``), in float32 on the tensor's device, then cast to its
dtype. So our pipeline and the official one, each built with its own classes in its own process,
get the same values bit for bit: the full-size benchmark feeds both the same 14B weights without
writing 30 GB to disk. Only torch is imported (the official code's environment imports this too).
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int, prefix: str = "") -> None:
    """Overwrite every parameter of ``module`` in place; ``prefix`` + its name is the checkpoint key.

    Matrices get ``N(0, 1/fan_in)`` (activations keep their scale through the layers), norm weights
    ``1 + N(0, 0.01)``, everything else ``N(0, 0.0004)``; as ``model.tiny`` draws them.
    """
    for name, param in module.named_parameters():
        key = prefix + name
        generator = torch.Generator(device=param.device).manual_seed(_seed(seed, key))
        values = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
        if param.dim() >= 2:
            values /= math.sqrt(math.prod(param.shape[1:]))
        elif "norm" in key and key.endswith("weight"):
            values = 1.0 + 0.1 * values
        else:
            values *= 0.02
        param.copy_(values)


@torch.no_grad()
def fingerprint(module: nn.Module) -> float:
    """A checksum of a module's weights (float64 sum of ``|w|``), to check two processes agree."""
    total = torch.zeros((), dtype=torch.float64)
    for param in module.parameters():
        total += param.detach().abs().sum(dtype=torch.float64).cpu()
    return float(total)
