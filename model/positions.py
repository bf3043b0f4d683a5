"""2-D sin-cos position embedding of the visual tokens, in the patch-major order of next-patch decoding.

The official pipeline builds one 1-D table over 256 positions (4096 px / 16 px per token) of width
``hidden/2`` laid out ``[sin | cos]``, and a 2-D embedding ``cat([emb(column), emb(row)])``. Tokens are
generated ``ps x ps`` patches at a time (``ps = sqrt(parallel_num)``), patches in raster order and
raster order inside each patch: the order ``(h w p1 p2)``.
"""

from __future__ import annotations

import torch

MAX_GRID_POSITIONS = 4096 // 16


def sincos_table(dim: int, num_positions: int = MAX_GRID_POSITIONS) -> torch.Tensor:
    """The 1-D table ``(num_positions, dim)``: ``[sin(pos * omega) | cos(pos * omega)]``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    angles = torch.outer(torch.arange(num_positions, dtype=torch.float32), omega)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def patch_major_embedding(table: torch.Tensor, grid_h: int, grid_w: int, patch: int) -> torch.Tensor:
    """Embedding of every token of a ``grid_h x grid_w`` grid in decoding order: ``(grid_h*grid_w, 2*dim)``."""
    dim = table.shape[1]
    rows = table[:grid_h].view(grid_h, 1, dim).expand(grid_h, grid_w, dim)
    cols = table[:grid_w].view(1, grid_w, dim).expand(grid_h, grid_w, dim)
    grid = torch.cat([cols, rows], dim=-1)
    return tokens_from_grid(grid.unsqueeze(0), patch).squeeze(0)


def tokens_from_grid(grid: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, H, W, C)`` grid -> ``(B, H*W, C)`` tokens in ``(h w p1 p2)`` order."""
    b, h, w, c = grid.shape
    tiles = grid.reshape(b, h // patch, patch, w // patch, patch, c).permute(0, 1, 3, 2, 4, 5)
    return tiles.reshape(b, h * w, c)


def grid_from_tokens(tokens: torch.Tensor, grid_h: int, grid_w: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`tokens_from_grid`, channels first: ``(B, N, C)`` -> ``(B, C, H, W)``."""
    b, _, c = tokens.shape
    tiles = tokens.reshape(b, grid_h // patch, grid_w // patch, patch, patch, c)
    return tiles.permute(0, 5, 1, 3, 2, 4).reshape(b, c, grid_h, grid_w)
