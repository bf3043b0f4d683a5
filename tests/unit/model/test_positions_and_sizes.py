"""Position embeddings, token ordering and the supported-size table."""

from __future__ import annotations

import math

import pytest
import torch

from model.positions import grid_from_tokens, patch_major_embedding, sincos_table, tokens_from_grid
from model.resolutions import (
    FAL_IMAGE_SIZE_PRESETS,
    SIZES_512_AREA,
    SIZES_1024_AREA,
    check_supported_size,
    resolve_image_size,
    snap_to_supported_size,
    supported_sizes,
)


def test_sincos_table_layout() -> None:
    table = sincos_table(8, 5)
    pos, i = 3, 1
    omega = 1.0 / 10000 ** (i / 4)
    assert table.shape == (5, 8)
    assert table[pos, i].item() == pytest.approx(math.sin(pos * omega), rel=1e-6)
    assert table[pos, 4 + i].item() == pytest.approx(math.cos(pos * omega), rel=1e-6)


def test_patch_major_order_and_column_first() -> None:
    table = torch.arange(16, dtype=torch.float32).view(8, 2)  # row r of the table = [2r, 2r+1]
    emb = patch_major_embedding(table, grid_h=4, grid_w=4, patch=2)
    # decoding order: patch (0,0) holds grid cells (0,0) (0,1) (1,0) (1,1); then patch (0,1) ...
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    for index, (row, col) in enumerate(order):
        assert emb[index].tolist() == table[col].tolist() + table[row].tolist()


def test_token_grid_round_trip() -> None:
    grid = torch.randn(2, 8, 12, 3)
    tokens = tokens_from_grid(grid, patch=4)
    back = grid_from_tokens(tokens, 8, 12, patch=4)
    assert torch.equal(back, grid.permute(0, 3, 1, 2))
    assert torch.equal(tokens[0, 0], grid[0, 0, 0]) and torch.equal(tokens[0, 4], grid[0, 1, 0])


def test_supported_size_tables() -> None:
    assert supported_sizes(64) == SIZES_1024_AREA
    assert set(supported_sizes(16)) == set(SIZES_1024_AREA) | set(SIZES_512_AREA)
    for h, w in supported_sizes(64):
        assert (h // 16) * (w // 16) % 64 == 0 and abs(h * w - 1024**2) <= 0.1 * 1024**2
    with pytest.raises(ValueError, match="parallel_num"):
        supported_sizes(32)


@pytest.mark.parametrize(
    ("preset", "for64", "for16"),
    [
        ("square_hd", (1024, 1024), (1024, 1024)),
        ("square", (1024, 1024), (512, 512)),
        ("portrait_4_3", (1152, 896), (1152, 896)),
        ("portrait_16_9", (1280, 768), (1280, 768)),
        ("landscape_4_3", (896, 1152), (896, 1152)),
        ("landscape_16_9", (768, 1280), (768, 1280)),
    ],
)
def test_fal_presets_snap(preset: str, for64: tuple[int, int], for16: tuple[int, int]) -> None:
    assert preset in FAL_IMAGE_SIZE_PRESETS
    assert resolve_image_size(preset, 64) == for64
    assert resolve_image_size(preset, 16) == for16


def test_custom_sizes_snap_by_aspect_then_area() -> None:
    assert snap_to_supported_size(2000, 500, 64) == (512, 2048)
    assert snap_to_supported_size(300, 300, 16) == (512, 512)
    assert snap_to_supported_size(1500, 1500, 16) == (1024, 1024)
    assert resolve_image_size({"width": 640, "height": 1536}, 64) == (1536, 640)
    with pytest.raises(ValueError):
        resolve_image_size("huge", 64)


def test_unsupported_size_is_a_clear_error() -> None:
    check_supported_size(1024, 1024, 64)
    with pytest.raises(ValueError, match="512x512 .* not supported by the 64x checkpoint"):
        check_supported_size(512, 512, 64)
