"""Random weights by one rule, for the tiny checkpoints and for the full-size benchmark.

Matrices get ``N(0, 1/fan_in)`` (activations keep their scale through the layers), norm weights
``1 + N(0, 0.01)``, everything else ``N(0, 0.0004)``: every layer non-zero, unlike training's zero
init. The draws come from one of two sources:

- one ``torch.Generator`` that every tensor draws from in turn (``model.tiny``: the tiny checkpoints
  are a fixed sequence of draws from one seed);
- a seed: each tensor then draws from its own generator, seeded from that seed and the tensor's name
  in the native checkpoint (``model.layers.0.mlp.up_proj.weight``, ``net.res_blocks.0.w1.weight``,
  ``decoder.conv_in.weight``, ``fc1.weight``), on the tensor's device. So our pipeline and the
  official one, each built with its own classes in its own process, get the same values bit for
  bit: the full-size benchmark feeds both the same 14B weights without writing 30 GB to disk.

Values are drawn in float32 and cast to the tensor's dtype. Only torch is imported (the official
code's environment imports this module too).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
from torch import nn


def keyed_generator(seed: int, key: str, device: torch.device) -> torch.Generator:
    """The generator of the tensor named ``key``: the same in any process, whatever else is drawn."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


def random_tensor(key: str, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor of the rule for the checkpoint tensor named ``key``, on the generator's device."""
    values = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    if len(shape) >= 2:
        values /= math.sqrt(math.prod(shape[1:]))
    elif "norm" in key and key.endswith("weight"):
        values = 1.0 + 0.1 * values
    else:
        values *= 0.02
    return values


@torch.no_grad()
def fill_random_(module: nn.Module, source: torch.Generator | int, prefix: str = "") -> None:
    """Overwrite every parameter of ``module`` in place; ``prefix`` + its name is the checkpoint key.

    ``source``: a generator all parameters draw from in order, or a seed for per-key generators.
    """
    for name, param in module.named_parameters():
        key = prefix + name
        if isinstance(source, torch.Generator):
            generator = source
        else:
            generator = keyed_generator(source, key, param.device)
        param.copy_(random_tensor(key, param.shape, generator))


@torch.no_grad()
def fingerprint(module: nn.Module) -> float:
    """A checksum of a module's weights (float64 sum of ``|w|``), to check two processes agree."""
    total = torch.zeros((), dtype=torch.float64)
    for param in module.parameters():
        total += param.detach().abs().sum(dtype=torch.float64).cpu()
    return float(total)
