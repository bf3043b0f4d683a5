"""The Qwen3 backbone driven for next-patch decoding: prefill with a KV cache, then one patch per step.

Rows of a batch may hold prompts of different lengths. They are left-padded; each row carries its
own RoPE positions, and attention skips a row's padding by slicing it off the keys, so every row
computes exactly what it would compute alone. Two attention patterns occur:

* prefill of the prompt and ``<|vision_start|> <|res_H|>``: causal;
* a block of ``P`` new tokens (``<|res_W|>`` + the query tokens, then each sampled patch):
  bidirectional inside the block and attending to the whole cache.

The attention runs through PyTorch SDPA, or flash-attn when it is installed and the tensors are on
a GPU in half precision.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Qwen3Config, Qwen3Model
from transformers.cache_utils import DynamicCache

ATTENTION_IMPLEMENTATION = "bitdance_patch"


@dataclass(frozen=True)
class AttentionPlan:
    """What the attention of one forward pass does: causal or block-bidirectional, and row groups.

    ``groups`` pairs a key offset (the left padding of those rows) with the indices of the rows.
    """

    causal: bool
    groups: tuple[tuple[int, torch.Tensor | None], ...]

    @classmethod
    def build(cls, causal: bool, offsets: list[int], device: torch.device) -> AttentionPlan:
        if len(set(offsets)) == 1:
            return cls(causal, ((offsets[0], None),))
        by_offset: dict[int, list[int]] = {}
        for row, offset in enumerate(offsets):
            by_offset.setdefault(offset, []).append(row)
        groups = tuple(
            (offset, torch.tensor(rows, dtype=torch.long, device=device)) for offset, rows in by_offset.items()
        )
        return cls(causal, groups)


def _flash_attn_func():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_func

    return flash_attn_func


_FLASH_ATTN = _flash_attn_func()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """``(B, H, Q, D)`` queries against ``(B, Hkv, K, D)`` keys -> ``(B, H, Q, D)``."""
    if _FLASH_ATTN is not None and q.is_cuda and v.dtype in (torch.float16, torch.bfloat16):
        dtype = v.dtype
        out = _FLASH_ATTN(
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


def patch_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AttentionPlan,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: the plan arrives in place of the attention mask."""
    plan = attention_mask
    if not isinstance(plan, AttentionPlan):
        raise TypeError("the BitDance backbone must be called with an AttentionPlan")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if len(plan.groups) == 1 and plan.groups[0][0] == 0:
        out = _attend(query, key, value, plan.causal, scale)
    else:
        out = query.new_zeros(query.shape)
        for offset, rows in plan.groups:
            index = slice(None) if rows is None else rows
            q, k, v = query[index], key[index][:, :, offset:], value[index][:, :, offset:]
            if plan.causal:  # padded query positions stay zero: their outputs are never used
                q = q[:, :, offset:]
            part = _attend(q, k, v, plan.causal, scale).to(out.dtype)
            out[index] = F.pad(part, (0, 0, offset, 0)) if plan.causal else part
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, patch_attention)


def build_backbone(config: Qwen3Config) -> Qwen3Model:
    """An (uninitialised, if built under the meta device) Qwen3 body wired to :func:`patch_attention`."""
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    return Qwen3Model(config)


@dataclass
class DecodingState:
    """KV cache and per-row bookkeeping between decoding steps."""

    cache: DynamicCache
    lengths: torch.Tensor  # (B,) tokens seen by each row, padding excluded
    block_plan: AttentionPlan


class PatchDecoder:
    """Runs the backbone for prefill and next-patch steps; returns hidden states after the final norm."""

    def __init__(self, backbone: Qwen3Model):
        self.backbone = backbone

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(ids)

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None, plan: AttentionPlan
    ) -> tuple[torch.Tensor, DynamicCache]:
        out = self.backbone(
            inputs_embeds=embeds,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            attention_mask={"full_attention": plan},
        )
        return out.last_hidden_state, out.past_key_values

    def prefill(self, embeds: torch.Tensor, padding: list[int], block: int) -> tuple[torch.Tensor, DecodingState]:
        """``embeds (B, L, H)`` left-padded by ``padding[b]``; the last ``block`` tokens form the first block.

        Returns the hidden states of that block ``(B, block, H)`` and the state for :meth:`step`.
        """
        rows, length = embeds.shape[:2]
        device = embeds.device
        pad = torch.tensor(padding, dtype=torch.long, device=device)
        positions = (torch.arange(length - block, device=device).unsqueeze(0) - pad.unsqueeze(1)).clamp_min(0)
        causal = AttentionPlan.build(True, padding, device)
        _, cache = self._forward(embeds[:, :-block], positions, None, causal)
        state = DecodingState(cache, length - block - pad, AttentionPlan.build(False, padding, device))
        return self.step(embeds[:, -block:], state), state

    def step(self, embeds: torch.Tensor, state: DecodingState) -> torch.Tensor:
        """Feed one block ``(B, P, H)``; returns its hidden states ``(B, P, H)``."""
        block = embeds.shape[1]
        positions = state.lengths.unsqueeze(1) + torch.arange(block, device=embeds.device).unsqueeze(0)
        hidden, state.cache = self._forward(embeds, positions, state.cache, state.block_plan)
        state.lengths = state.lengths + block
        return hidden
