"""The memory plan (``python -m model.plan``): parameters, KV cache and activation bytes against the real pipeline.

The activations are measured by recording every tensor the pipeline creates (a dispatch mode that
follows each storage until it is freed) while it runs on the CPU in float32, and compared with the
plan computed for the CPU.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from model.autoencoder import AutoencoderConfig, Decoder
from model.checkpoint.configs import CONFIGS_DIR, read_configs
from model.checkpoint.memory_plan import (
    CUDA_RESERVE_BYTES,
    GIB,
    DeviceRules,
    Generation,
    build_plan,
    check_device_memory,
    decoder_bytes,
    kv_cache_bytes,
    memory_refusal,
    sampling_bytes,
)
from model.pipeline import BitDancePipeline, GenerationRequest
from model.plan import main

CPU = DeviceRules.for_device("cpu")


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensors created inside the ``with`` block that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage in self.seen:  # a view or an in-place result
                    continue
                nbytes = storage.nbytes()
                self.seen[storage] = nbytes
                weakref.finalize(storage, self._freed, nbytes)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
        return out


def test_released_configs_give_the_14b_parameter_counts() -> None:
    for variant, parallel_num, vocab in (("64x", 64, 151988), ("16x", 16, 151940)):
        configs = read_configs(CONFIGS_DIR / f"bitdance-14b-{variant}")
        assert configs.head.parallel_num == parallel_num
        assert configs.llm.vocab_size == vocab  # Qwen3's 151669 tokens + 256 res + (P - 1) query tokens
        plan = build_plan(configs, "cuda", batches=(1,))
        params = plan.parameters
        # Qwen3-14B is 14.77 B parameters with its 0.78 B lm_head, which inference does not load.
        assert 13.9e9 < params["llm"] < 14.1e9
        assert 1.7e9 < params["head"] < 1.8e9  # 6 SwiGLU blocks and 2 adaLN linears of width 5120
        assert params["projector"] == 32 * 5120 + 5120 + 5120 * 5120 + 5120
        assert params["total"] == sum(params[k] for k in ("llm", "head", "autoencoder", "projector"))
        assert plan.bytes["total"] == 2 * params["total"]  # bf16 on CUDA


def test_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CONFIGS_DIR / "bitdance-14b-64x"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"parameters", "bytes", "batches"}
    assert set(out["parameters"]) == set(out["bytes"]) == {"llm", "head", "autoencoder", "projector", "total"}
    sizes = {(b["height"], b["width"]) for b in out["batches"]}
    assert (1024, 1024) in sizes and len(sizes) == 11
    assert {(b["batch"], b["guidance"]) for b in out["batches"]} == {(n, g) for n in (1, 4, 8) for g in (True, False)}
    square = {(b["batch"], b["guidance"]): b for b in out["batches"] if (b["height"], b["width"]) == (1024, 1024)}
    # Guidance doubles the LLM rows, so the cache; 8 images hold 8 times the cache of one.
    assert square[(1, True)]["kv_cache_bytes"] == 2 * square[(1, False)]["kv_cache_bytes"]
    assert square[(8, True)]["kv_cache_bytes"] == 8 * square[(1, True)]["kv_cache_bytes"]
    assert all(b["peak_bytes"] > out["bytes"]["total"] for b in out["batches"])


def test_a_missing_config_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "is not a BitDance checkpoint" in capsys.readouterr().err


def test_kv_cache_bytes_equal_the_real_cache(pipe16: BitDancePipeline, tiny16_dir: Path) -> None:
    configs = read_configs(tiny16_dir)
    prompt = "a lighthouse on a cliff during a storm"
    prompt_tokens = len(pipe16.prompts.conditional_ids(prompt))
    for images, guidance, (height, width) in ((1, 7.5, (512, 512)), (3, 1.0, (256, 1024)), (2, 3.0, (1024, 1024))):
        requests = [GenerationRequest(prompt, seed=i, guidance_scale=guidance) for i in range(images)]
        grid_h, grid_w = height // 16, width // 16
        with torch.inference_mode():
            _, state = pipe16._prefill(requests, grid_h, grid_w, grid_h * grid_w // 16)
        allocated = sum(t.nbytes for t in (*state.cache.keys, *state.cache.values) if t is not None)
        generation = Generation(images, guidance > 1, height, width, prompt_tokens)
        assert kv_cache_bytes(configs, generation, CPU) == allocated


@pytest.mark.parametrize(
    ("ch", "ch_mult", "num_res_blocks", "height", "width"),
    [(32, (1, 1, 1, 1, 1), 1, 256, 256), (32, (1, 2, 2, 4), 2, 128, 256)],
)
def test_decoder_bytes_equal_the_measured_peak(ch, ch_mult, num_res_blocks, height, width) -> None:
    config = AutoencoderConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=32)
    decoder = Decoder(config).eval()
    patch = config.patch_size
    tokens = torch.sign(torch.randn(1, 32, height // patch, width // patch))
    with torch.inference_mode(), LiveTensors() as live:
        decoder(tokens.clone())
    planned = decoder_bytes(config, height, width, CPU)
    assert planned == live.peak


def test_sampling_bytes_match_the_measured_peak(pipe16: BitDancePipeline, tiny16_dir: Path) -> None:
    """KV cache + the sampling stages' temporaries against the live tensors of ``generate_batch``'s sampling."""
    configs = read_configs(tiny16_dir)
    prompt = "a red fox sitting in a snowy forest at sunset"
    requests = [GenerationRequest(prompt, seed=i, guidance_scale=7.5) for i in range(2)]
    with LiveTensors() as live:
        pipe16.generate_batch(requests, height=512, width=512, num_inference_steps=1, decode=False)
    generation = Generation(2, True, 512, 512, len(pipe16.prompts.conditional_ids(prompt)))
    planned = kv_cache_bytes(configs, generation, CPU) + sampling_bytes(configs, generation, CPU)
    assert 0.93 <= planned / live.peak <= 1.15, (planned, live.peak)


def _plan_64x():
    return build_plan(read_configs(CONFIGS_DIR / "bitdance-14b-64x"), "cuda", batches=range(1, 9))


def test_memory_refusal_passes_when_the_batch_fits() -> None:
    plan = _plan_64x()
    needed = plan.worst(8).peak_bytes + CUDA_RESERVE_BYTES
    assert memory_refusal(plan, 8, needed, "cuda:0") is None
    assert memory_refusal(plan, 8, 141 * GIB, "cuda:0") is None


def test_memory_refusal_names_needed_free_and_the_batch_that_fits() -> None:
    plan = _plan_64x()
    free = plan.worst(4).peak_bytes + CUDA_RESERVE_BYTES  # room for 4 images, not 8
    message = memory_refusal(plan, 8, free, "cuda:0")
    assert message is not None
    needed = (plan.worst(8).peak_bytes + CUDA_RESERVE_BYTES) / GIB
    assert f"needs {needed:.1f} GiB" in message
    assert f"{free / GIB:.1f} GiB free" in message
    assert "cuda:0" in message and "BITDANCE_MAX_BATCH_IMAGES=8" in message
    assert "set BITDANCE_MAX_BATCH_IMAGES=4 or lower" in message


def test_memory_refusal_when_not_even_one_image_fits() -> None:
    plan = _plan_64x()
    message = memory_refusal(plan, 1, 24 * GIB, "cuda:1")  # a 24 GB card cannot hold 30 GiB of bf16 weights
    assert message is not None and "not even one image fits" in message


def test_the_check_is_skipped_off_cuda(tiny16_dir: Path) -> None:
    assert check_device_memory(read_configs(tiny16_dir), "cpu", 8) is None
