"""The LLM driver: preallocated KV cache, row groups, and rows computed exactly as alone."""

from __future__ import annotations

import pytest
import torch

from model.llm import AttentionPlan, PatchKVCache
from model.pipeline import BitDancePipeline


def test_attention_plan_groups_sorted_rows_into_slices() -> None:
    plan = AttentionPlan.build(False, [0, 0, 3, 5, 5])
    assert plan.groups == ((0, slice(0, 2)), (3, slice(2, 3)), (5, slice(3, 5)))
    assert AttentionPlan.build(True, [2, 2]).groups == ((2, slice(0, 2)),)
    with pytest.raises(ValueError, match="sorted"):
        AttentionPlan.build(False, [3, 0])


def test_kv_cache_writes_in_place_and_returns_views() -> None:
    cache = PatchKVCache(num_layers=2, capacity=6)
    first = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).view(2, 1, 4, 3)
    for layer in range(2):
        keys, values = cache.update(first, -first, layer)
        assert keys.shape == (2, 1, 4, 3) and torch.equal(keys, first) and torch.equal(values, -first)
    assert cache.get_seq_length() == 4
    block = torch.ones(2, 1, 2, 3)
    keys, values = cache.update(block, block, 0)
    assert keys.shape == (2, 1, 6, 3)
    assert torch.equal(keys[:, :, :4], first) and torch.equal(keys[:, :, 4:], block)
    assert keys.data_ptr() == cache.keys[0].data_ptr()  # a view of the buffer, not a copy
    cache.update(block, block, 1)
    with pytest.raises(RuntimeError, match="KV cache full"):
        cache.update(block, block, 0)


def test_rows_of_any_padding_order_match_each_row_alone(pipe16: BitDancePipeline) -> None:
    """Rows in unsorted padding order (the decoder sorts them internally) give each row's own numbers.

    Blocks of 16 tokens, as a 16x checkpoint feeds: one-thread MKL computes a row of a product the
    same way for any number of rows from there on (a handful of rows takes another kernel).
    """
    decoder = pipe16.patch_decoder
    hidden = pipe16.llm_config.hidden_size
    generator = torch.Generator().manual_seed(3)
    lengths = [37, 46, 37, 42]  # prompt + first block lengths; padding 9, 0, 9, 4: not sorted
    width, block, blocks = max(lengths), 16, 3
    rows = [torch.randn(n, hidden, generator=generator) for n in lengths]
    fed = [torch.randn(len(lengths), block, hidden, generator=generator) for _ in range(blocks - 1)]

    with torch.inference_mode():
        padded = torch.stack([torch.cat([torch.zeros(width - len(r), hidden), r]) for r in rows])
        out, state = decoder.prefill(padded, [width - n for n in lengths], block, blocks)
        batch = [out] + [decoder.step(f, state) for f in fed]
        for i, row in enumerate(rows):
            alone, alone_state = decoder.prefill(row.unsqueeze(0), [0], block, blocks)
            expected = [alone] + [decoder.step(f[i : i + 1], alone_state) for f in fed]
            for got, want in zip(batch, expected, strict=True):
                assert torch.equal(got[i : i + 1], want)
