"""The attention kernel shared by the LLM and the diffusion head: flash-attn where upstream uses it.

Upstream calls ``flash_attn_func`` on the GPU. When the ``flash_attn`` package is installed and the
tensors are CUDA half precision we call it too; otherwise PyTorch SDPA computes the same attention
(and picks its own fused kernel on the GPU). flash-attn is never required.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F


def _flash_attn_func():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_func

    return flash_attn_func


FLASH_ATTN = _flash_attn_func()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None) -> torch.Tensor:
    """``(B, H, Q, D)`` queries against ``(B, Hkv, K, D)`` keys and values -> ``(B, H, Q, D)``.

    ``scale`` defaults to ``D ** -0.5``; ``Hkv`` may divide ``H`` (grouped-query attention).
    """
    if FLASH_ATTN is not None and q.is_cuda and v.dtype in (torch.float16, torch.bfloat16):
        dtype = v.dtype
        out = FLASH_ATTN(
            q.transpose(1, 2).to(dtype),
            k.transpose(1, 2).to(dtype),
            v.transpose(1, 2),
            causal=causal,
            softmax_scale=scale,
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
