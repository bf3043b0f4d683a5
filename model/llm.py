"""The Qwen3 LLM driven for next-patch decoding: prefill with a KV cache, then one patch per step.

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

import inspect
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, Qwen3Config, Qwen3Model

from model.attention import attend

ATTENTION_IMPLEMENTATION = "bitdance_patch"
# The cache argument of ``Qwen3Model.forward``: ``past_key_values`` up to transformers 5.23, ``cache`` after.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class AttentionPlan:
    """What the attention of one forward pass does: causal or block-bidirectional, and row groups.

    ``groups`` pairs a key offset (the left padding of those rows) with the slice of rows that share
    it. The decoder sorts its rows by padding, so every group is a contiguous slice and attention
    reads views of the cache instead of gathering copies of it.
    """

    causal: bool
    groups: tuple[tuple[int, slice], ...]

    @classmethod
    def build(cls, causal: bool, offsets: list[int]) -> AttentionPlan:
        if offsets != sorted(offsets):
            raise ValueError("rows must be sorted by their padding")
        groups: list[tuple[int, slice]] = []
        start = 0
        for row in range(1, len(offsets) + 1):
            if row == len(offsets) or offsets[row] != offsets[start]:
                groups.append((offsets[start], slice(start, row)))
                start = row
        return cls(causal, tuple(groups))


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
        raise TypeError("the BitDance LLM must be called with an AttentionPlan")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if len(plan.groups) == 1 and plan.groups[0][0] == 0:
        out = attend(query, key, value, plan.causal, scale)
    else:
        out = query.new_zeros(query.shape)
        for offset, rows in plan.groups:
            q, k, v = query[rows], key[rows, :, offset:], value[rows, :, offset:]
            if plan.causal:  # padded query positions stay zero: their outputs are never used
                out[rows, :, offset:] = attend(q[:, :, offset:], k, v, True, scale)
            else:
                out[rows] = attend(q, k, v, False, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, patch_attention)


def build_llm(config: Qwen3Config) -> Qwen3Model:
    """An (uninitialised, if built under the meta device) Qwen3 body wired to :func:`patch_attention`."""
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    return Qwen3Model(config)


class PatchKVCache:
    """Keys and values of every layer in buffers preallocated for the whole generation.

    Each forward writes its new tokens in place and attention reads views up to the current length,
    so a decoding step copies only its own block (a ``DynamicCache`` re-concatenates everything).
    Implements the part of the transformers cache interface that ``Qwen3Model`` uses.
    """

    def __init__(self, num_layers: int, capacity: int):
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0  # positions stored per row, left padding included

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``(B, Hkv, n, D)`` new keys and values; returns all of this layer's, as views.

        The RoPE and cache-position arguments transformers passes (their name differs across
        versions) are not needed: positions are explicit and the cache only appends.
        """
        start, end = self.length, self.length + key.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions needed, {self.capacity} allocated")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if keys is None or values is None:
            shape = (key.shape[0], key.shape[1], self.capacity, key.shape[3])
            keys, values = key.new_empty(shape), value.new_empty(shape)
            self.keys[layer_idx], self.values[layer_idx] = keys, values
        keys[:, :, start:end] = key
        values[:, :, start:end] = value
        if layer_idx == len(self.keys) - 1:
            self.length = end
        return keys[:, :, :end], values[:, :, :end]


@dataclass
class DecodingState:
    """KV cache and per-row bookkeeping between decoding steps, in the decoder's sorted row order."""

    cache: PatchKVCache
    lengths: torch.Tensor  # (B,) tokens seen by each row, padding excluded
    block_plan: AttentionPlan
    order: torch.Tensor | None  # caller row -> sorted row, None when already sorted
    restore: torch.Tensor | None  # sorted row -> caller row


class PatchDecoder:
    """Runs the LLM for prefill and next-patch steps; returns hidden states after the final norm.

    Rows are processed sorted by their left padding (inputs and outputs keep the caller's order), so
    rows that share a padding form one contiguous slice of the cache.
    """

    def __init__(self, llm: Qwen3Model):
        self.llm = llm

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.embed_tokens(ids)

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: PatchKVCache, plan: AttentionPlan
    ) -> torch.Tensor:
        out = self.llm(
            inputs_embeds=embeds,
            position_ids=positions,
            use_cache=True,
            attention_mask={"full_attention": plan},
            **{CACHE_ARGUMENT: cache},
        )
        return out.last_hidden_state

    def prefill(
        self, embeds: torch.Tensor, padding: list[int], block: int, num_blocks: int
    ) -> tuple[torch.Tensor, DecodingState]:
        """``embeds (B, L, H)`` left-padded by ``padding[b]``; the last ``block`` tokens form the first block.

        ``num_blocks`` counts every block that will be fed, this first one included (it sizes the
        cache). Returns the hidden states of the first block ``(B, block, H)`` and the state for
        :meth:`step`.
        """
        rows, length = embeds.shape[:2]
        device = embeds.device
        sorted_rows = sorted(range(rows), key=lambda r: padding[r])
        order = restore = None
        if sorted_rows != list(range(rows)):
            order = torch.tensor(sorted_rows, dtype=torch.long, device=device)
            restore = torch.argsort(order)
            embeds = embeds.index_select(0, order)
            padding = [padding[r] for r in sorted_rows]
        pad = torch.tensor(padding, dtype=torch.long, device=device)
        positions = (torch.arange(length - block, device=device).unsqueeze(0) - pad.unsqueeze(1)).clamp_min(0)
        cache = PatchKVCache(self.llm.config.num_hidden_layers, length - block + num_blocks * block)
        self._forward(embeds[:, :-block], positions, cache, AttentionPlan.build(True, padding))
        state = DecodingState(cache, length - block - pad, AttentionPlan.build(False, padding), None, restore)
        hidden = self.step(embeds[:, -block:], state)
        state.order = order
        return hidden, state

    def step(self, embeds: torch.Tensor, state: DecodingState) -> torch.Tensor:
        """Feed one block ``(B, P, H)``; returns its hidden states ``(B, P, H)``."""
        if state.order is not None:
            embeds = embeds.index_select(0, state.order)
        block = embeds.shape[1]
        positions = state.lengths.unsqueeze(1) + torch.arange(block, device=embeds.device).unsqueeze(0)
        hidden = self._forward(embeds, positions, state.cache, state.block_plan)
        state.lengths = state.lengths + block
        return hidden if state.restore is None else hidden.index_select(0, state.restore)
