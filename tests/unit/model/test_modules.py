"""Decoder and head details that the official code fixes."""

from __future__ import annotations

import math

import torch

from model.autoencoder import AdaptiveGroupNorm, ResBlock, depth_to_space, swish_, to_uint8_pixels
from model.head import timestep_embedding


def test_depth_to_space_is_dcr() -> None:
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    y = depth_to_space(x, 2)
    assert y.shape == (2, 2, 6, 6)
    for c in range(2):
        for i in range(6):
            for j in range(6):
                # DCR: input channel (i%2)*2*C' + (j%2)*C' + c
                source = (i % 2) * 4 + (j % 2) * 2 + c
                assert y[1, c, i, j] == x[1, source, i // 2, j // 2]


def test_adaptive_group_norm_uses_unbiased_variance() -> None:
    norm = AdaptiveGroupNorm(z_channels=2, channels=32)
    with torch.no_grad():
        norm.gamma.weight.copy_(torch.zeros(32, 2))
        norm.gamma.weight[:, 0] = 1.0
        norm.gamma.bias.zero_()
        norm.beta.weight.zero_()
        norm.beta.bias.zero_()
    style = torch.tensor([1.0, -1.0, 1.0, 1.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    x = torch.randn(1, 32, 4, 4)
    out = norm(x, style)
    unbiased_std = math.sqrt(torch.var(style[0, 0].flatten(), unbiased=True).item() + 1e-6)
    expected = torch.nn.functional.group_norm(x, 32, eps=1e-6) * unbiased_std
    assert torch.allclose(out, expected, atol=1e-6)


def test_pixels_add_128_and_truncate() -> None:
    images = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0]).view(1, 1, 1, 5).repeat(1, 3, 1, 1)
    pixels = to_uint8_pixels(images)
    assert pixels.shape == (1, 1, 5, 3)
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8_pixels(torch.full((1, 3, 1, 1), 0.01))[0, 0, 0, 0].item() == 129


def test_timestep_embedding_is_cos_then_sin_of_1000t() -> None:
    emb = timestep_embedding(torch.tensor([0.5]), dim=8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    assert torch.allclose(emb[0, :4], torch.tensor([math.cos(500 * f) for f in freqs]), atol=1e-5)
    assert torch.allclose(emb[0, 4:], torch.tensor([math.sin(500 * f) for f in freqs]), atol=1e-5)


def test_in_place_decoder_ops_keep_the_promoted_dtype_under_autocast() -> None:
    """Residual adds and the adaptive norm write in place only where ``a + b`` would keep ``a``'s dtype."""
    torch.manual_seed(0)
    block, norm = ResBlock(32, 32), AdaptiveGroupNorm(32, 32)
    x, style = torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = block.conv2(swish_(block.norm2(block.conv1(swish_(block.norm1(x))))))
        assert block(x).dtype == (h + x).dtype == torch.float32
        plain = norm.gamma((style.flatten(2).var(dim=-1) + 1e-6).sqrt()).view(1, 32, 1, 1) * norm.gn(x)
        assert norm(x, style).dtype == plain.dtype
    assert torch.equal(block(x), block.conv2(swish_(block.norm2(block.conv1(swish_(block.norm1(x)))))) + x)
