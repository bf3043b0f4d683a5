"""The diffusion head: predicts a patch of 32-bit binary tokens from the LLM's hidden states.

Module and parameter names match ``vision_head.safetensors`` (``net.*``) so checkpoints load key for
key. Conditioning: ``y = silu(time_embed(t) + cond_embed(c))``; adaLN parameters are shared by
consecutive blocks (``depth_latent // depth_adanln`` blocks per adaLN linear); attention runs inside
each patch; the output is squashed to ``[-1, 1]`` by ``2 * sigmoid - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import attend
from model.precision import Float32LayerNorm, float32_softmax

HEAD_DIM = 128
TIME_FREQUENCIES = 256
MANUAL_ATTENTION_MAX_LEN = 32


@dataclass(frozen=True)
class HeadConfig:
    """``vision_head_config.json``; training-only fields are kept so the file round-trips."""

    ch_target: int
    ch_cond: int
    ch_latent: int
    depth_latent: int
    depth_adanln: int
    parallel_num: int
    use_swiglu: bool = False
    time_shift: float = 1.0
    time_schedule: str = "logit_normal"
    P_mean: float = 0.0  # noqa: N815 - the checkpoint's spelling
    P_std: float = 1.0  # noqa: N815
    diff_batch_mul: int = 1
    grad_checkpointing: bool = False

    @classmethod
    def from_dict(cls, raw: dict) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown vision head config keys: {unknown}")
        return cls(**raw)


def timestep_embedding(t: torch.Tensor, dim: int = TIME_FREQUENCIES, max_period: float = 10000.0) -> torch.Tensor:
    """``(B,)`` times in [0, 1] -> ``(B, dim)`` features ``[cos | sin]`` of ``1000 t``."""
    half = dim // 2
    t = 1000.0 * t.float()
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


class TimestepEmbedder(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQUENCIES, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t))


class PatchAttention(nn.Module):
    """Bidirectional self-attention among the tokens of one patch; heads of width 128."""

    def __init__(self, channels: int):
        super().__init__()
        self.num_heads = channels // HEAD_DIM
        self.wqkv = nn.Linear(channels, 3 * channels)
        self.wo = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (part.view(b, n, self.num_heads, HEAD_DIM).transpose(1, 2) for part in self.wqkv(x).chunk(3, -1))
        if n <= MANUAL_ATTENTION_MAX_LEN:  # the official code's explicit path for short patches
            weights = float32_softmax((q * HEAD_DIM**-0.5) @ k.transpose(-1, -2), dim=-1)
            out = weights @ v
        else:
            out = attend(q, k, v, causal=False)
        return self.wo(out.transpose(1, 2).reshape(b, n, c))


class HeadBlock(nn.Module):
    """adaLN-modulated transformer block; SwiGLU (``w1``, ``w2``) or a SiLU MLP (``mlp``)."""

    def __init__(self, channels: int, use_swiglu: bool):
        super().__init__()
        hidden = int(channels * 1.5)
        self.use_swiglu = use_swiglu
        self.norm1 = Float32LayerNorm(channels, eps=1e-6)
        self.attn = PatchAttention(channels)
        self.norm2 = Float32LayerNorm(channels, eps=1e-6)
        if use_swiglu:
            self.w1 = nn.Linear(channels, 2 * hidden)
            self.w2 = nn.Linear(hidden, channels)
        else:
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, modulation: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``modulation`` is :func:`adaln_modulation`'s ``(1 + scale1, shift1, gate1, 1 + scale2, shift2, gate2)``."""
        factor1, shift1, gate1, factor2, shift2, gate2 = modulation
        x = x + self.attn(self.norm1(x) * factor1 + shift1) * gate1
        h = self.norm2(x) * factor2 + shift2
        if self.use_swiglu:
            gate, value = self.w1(h).chunk(2, dim=-1)
            h = self.w2(F.silu(gate) * value)
        else:
            h = self.mlp(h)
        return x + h * gate2


def adaln_modulation(ada_ln: nn.Linear, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The six adaLN tensors of a block, with ``1 + scale`` formed once for every block sharing them."""
    scale1, shift1, gate1, scale2, shift2, gate2 = ada_ln(y).chunk(6, dim=-1)
    return 1 + scale1, shift1, gate1, 1 + scale2, shift2, gate2


class FinalLayer(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm_final = Float32LayerNorm(channels, eps=1e-6, elementwise_affine=False)
        self.ada_ln_modulation = nn.Linear(channels, 2 * channels)
        self.linear = nn.Linear(channels, out_channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_ln_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1.0 + scale) + shift)


class HeadNetwork(nn.Module):
    """``net`` of the checkpoint: ``(x (B, P, 32), t (B,), c (B, P, hidden)) -> x1 prediction (B, P, 32)``."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        channels = config.ch_latent
        if channels % HEAD_DIM:
            raise ValueError(f"ch_latent must be a multiple of {HEAD_DIM}, got {channels}")
        self.time_embed = TimestepEmbedder(channels)
        self.cond_embed = nn.Linear(config.ch_cond, channels)
        self.input_proj = nn.Linear(config.ch_target, channels)
        self.res_blocks = nn.ModuleList(HeadBlock(channels, config.use_swiglu) for _ in range(config.depth_latent))
        self.ada_ln_blocks = nn.ModuleList(nn.Linear(channels, 6 * channels) for _ in range(config.depth_adanln))
        self.ada_ln_switch_every = max(1, config.depth_latent // config.depth_adanln)
        if config.depth_latent % self.ada_ln_switch_every:
            raise ValueError("depth_latent must be divisible by depth_adanln")
        self.final_layer = FinalLayer(channels, config.ch_target)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.time_embed(t).unsqueeze(1), self.cond_embed(c))

    def denoise(self, x: torch.Tensor, time_features: torch.Tensor, cond_features: torch.Tensor) -> torch.Tensor:
        """The network body on embedded inputs: ``time_features (B, 1, C)``, ``cond_features (B, P, C)``.

        The condition embedding does not change during sampling, so callers compute it once per patch.
        """
        x = self.input_proj(x)
        y = F.silu(time_features + cond_features)
        modulation: tuple[torch.Tensor, ...] = ()
        for i, block in enumerate(self.res_blocks):
            if i % self.ada_ln_switch_every == 0:
                modulation = adaln_modulation(cast(nn.Linear, self.ada_ln_blocks[i // self.ada_ln_switch_every]), y)
            x = block(x, modulation)
        return 2 * torch.sigmoid(self.final_layer(x, y)) - 1


class DiffusionHead(nn.Module):
    """The ``vision_head.safetensors`` module (its parameters live under ``net.``)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.net = HeadNetwork(config)
