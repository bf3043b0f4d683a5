"""The binary-token autoencoder (``ae.safetensors``): the decoder that turns a token grid into pixels.

The encoder is only declared, so that the checkpoint's ``encoder.*`` keys can be checked; inference
never builds its weights. Decoder details kept from the official code: GroupNorm(32, eps 1e-6),
``x * sigmoid(x)``, bias-free ResBlock convolutions, an adaptive group norm whose scale is the
*unbiased* per-channel std of the token map (eps added before the sqrt), and a 2x upsampler that is
a convolution to 4C channels followed by depth-to-space in DCR order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from model.precision import Float32GroupNorm

GROUPS = 32
EPS = 1e-6


@dataclass(frozen=True)
class AutoencoderConfig:
    """``ae_config.json``: ``{"gan_decoder": false, "ddconfig": {...}}``."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False
    gan_decoder: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> AutoencoderConfig:
        dd: dict[str, Any] = dict(raw["ddconfig"])
        known = {"ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "double_z"}
        values: dict[str, Any] = {k: (tuple(v) if k == "ch_mult" else v) for k, v in dd.items() if k in known}
        config = cls(
            **values,
            gan_decoder=bool(raw.get("gan_decoder", False)),
            extra={k: v for k, v in dd.items() if k not in known},
        )
        if config.gan_decoder:
            raise ValueError("gan_decoder autoencoders are not used by the BitDance text-to-image checkpoints")
        return config

    @property
    def patch_size(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


SWISH_CHUNK = 1 << 18


def swish_(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)`` computed in place, the same bits as the plain expression.

    Large maps are done in cache-sized chunks: the temporary stays small (no page faults for a
    fresh 100+ MB buffer at 1024x1024) and each chunk is still in cache for the multiply.
    """
    if x.is_cuda or not x.is_contiguous() or x.numel() <= SWISH_CHUNK:
        return x.mul_(torch.sigmoid(x))
    for chunk in x.view(-1).split(SWISH_CHUNK):
        chunk.mul_(torch.sigmoid(chunk))
    return x


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = Float32GroupNorm(GROUPS, in_channels, eps=EPS)
        self.norm2 = Float32GroupNorm(GROUPS, out_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Intermediates are fresh tensors, so the activations and the residual add work in place
        # (same arithmetic, far fewer full-resolution allocations at 1024x1024).
        h = self.conv1(swish_(self.norm1(x)))
        h = self.conv2(swish_(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return add_(h, shortcut)


def add_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, written into ``a`` when that keeps the promoted dtype (under autocast it may not)."""
    return a.add_(b) if torch.promote_types(a.dtype, b.dtype) == a.dtype else a + b


def mul_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b``, written into ``a`` when that keeps the promoted dtype."""
    return a.mul_(b) if torch.promote_types(a.dtype, b.dtype) == a.dtype else a * b


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """DCR depth-to-space: ``(B, C, H, W) -> (B, C/block², H·block, W·block)``."""
    b, c, h, w = x.shape
    x = x.view(b, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c // block**2, h * block, w * block)


class Upsampler(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x))


class AdaptiveGroupNorm(nn.Module):
    """``GroupNorm(x) * gamma(std(z)) + beta(mean(z))`` with per-channel statistics of the token map."""

    def __init__(self, z_channels: int, channels: int):
        super().__init__()
        self.gn = Float32GroupNorm(GROUPS, channels, eps=EPS, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = style.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + EPS).sqrt()).view(b, c, 1, 1)
        bias = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
        return add_(mul_(self.gn(x), scale), bias)


class _Level(nn.Module):
    """One resolution level (``up.N`` / ``down.N``): its ResBlocks and optional resampler."""

    upsample: Upsampler  # decoder levels above the lowest

    def __init__(self, blocks: list[ResBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Decoder(nn.Module):
    """``(B, z, h, w)`` binary tokens -> ``(B, 3, 16h, 16w)`` image in about [-1, 1]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch, mult, n_res, z = config.ch, config.ch_mult, config.num_res_blocks, config.z_channels
        channels = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, channels, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(channels, channels) for _ in range(n_res))
        levels: list[_Level] = []
        adaptive: list[AdaptiveGroupNorm] = []
        for level in reversed(range(len(mult))):
            out = ch * mult[level]
            adaptive.insert(0, AdaptiveGroupNorm(z, channels))
            blocks = []
            for _ in range(n_res):
                blocks.append(ResBlock(channels, out))
                channels = out
            up = _Level(blocks)
            if level > 0:
                up.upsample = Upsampler(channels)
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = Float32GroupNorm(GROUPS, channels, eps=EPS)
        self.conv_out = nn.Conv2d(channels, config.out_ch, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        style = tokens
        x = self.conv_in(tokens)
        for block in self.mid_block:
            x = block(x)
        for level in reversed(range(len(self.up))):
            x = self.adaptive[level](x, style)
            up = cast(_Level, self.up[level])
            for block in up.block:
                x = block(x)
            if level > 0:
                x = up.upsample(x)
        return self.conv_out(swish_(self.norm_out(x)))


class Encoder(nn.Module):
    """Declared for key checking only (the text-to-image pipeline never encodes images)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch, mult, n_res = config.ch, config.ch_mult, config.num_res_blocks
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1, bias=False)
        levels = []
        in_mult = (1, *mult)
        channels = ch
        for level in range(len(mult)):
            channels, out = ch * in_mult[level], ch * mult[level]
            blocks = []
            for _ in range(n_res):
                blocks.append(ResBlock(channels, out))
                channels = out
            down = _Level(blocks)
            if level < len(mult) - 1:
                down.downsample = nn.Conv2d(out, out, 3, stride=2, padding=1)
            levels.append(down)
        self.down = nn.ModuleList(levels)
        self.mid_block = nn.ModuleList(ResBlock(channels, channels) for _ in range(n_res))
        self.norm_out = Float32GroupNorm(GROUPS, channels, eps=EPS)
        self.conv_out = nn.Conv2d(channels, config.z_channels, 1)


class BinaryAutoencoder(nn.Module):
    """The whole ``ae.safetensors`` module: ``encoder.*`` and ``decoder.*``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)


def to_uint8_pixels(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` decoder output -> ``(B, H, W, 3)`` uint8 on the CPU, exactly as the official code."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)
