"""The numeric path of the GPU on any device: bf16 autocast, with norms and softmax in float32.

On CUDA the pipeline runs bf16 weights under ``torch.autocast("cuda", bfloat16)``: matrix
products, convolutions and attention compute in bf16, while the ops on CUDA autocast's float32
list (``layer_norm``, ``group_norm``, ``softmax`` among them) compute in float32. CPU autocast
converts the same matrix products but keeps those three in the input's dtype (bf16), so bf16 on
the CPU under CPU autocast alone is not the GPU's arithmetic. The modules here make the float32
explicit: on CUDA they do what autocast already does (the same casts, so the same results), in
float32 they are the plain ops (bit-identical), and on the CPU in bf16 they give the dtype flow
CUDA has. The norm classes subclass ``nn.LayerNorm`` / ``nn.GroupNorm``, so the checkpoints'
parameter names are unchanged.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

AUTOCAST_DTYPE = torch.bfloat16


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32: itself when it already is (not even an op is dispatched: the plain path)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _float32_or_none(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else _float32(tensor)


class Float32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 (input, weight and bias), as CUDA autocast computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _float32_or_none(self.weight), _float32_or_none(self.bias)
        return F.layer_norm(_float32(x), self.normalized_shape, weight, bias, self.eps)


class Float32GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32 (input, weight and bias), as CUDA autocast computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _float32_or_none(self.weight), _float32_or_none(self.bias)
        return F.group_norm(_float32(x), self.num_groups, weight, bias, self.eps)


def float32_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``softmax`` in float32, as CUDA autocast computes it."""
    return F.softmax(_float32(x), dim=dim)


def default_dtype(device: torch.device) -> torch.dtype:
    """The weights' dtype unless asked otherwise: bf16 on CUDA (as upstream), float32 on the CPU."""
    return AUTOCAST_DTYPE if device.type == "cuda" else torch.float32


def uses_autocast(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the pipeline runs under bf16 autocast: always on CUDA (as upstream), and for bf16 weights anywhere.

    float32 weights on the CPU run without autocast: the reference arithmetic, unchanged.
    """
    return device.type == "cuda" or dtype == AUTOCAST_DTYPE


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[object]:
    """The autocast the pipeline's forward passes run under on ``device`` with ``dtype`` weights."""
    if uses_autocast(device, dtype):
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPE)
    return contextlib.nullcontext()
