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
from torch import nn
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
from model.precision import autocast

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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_decoder_bytes_equal_the_measured_peak(ch, ch_mult, num_res_blocks, height, width, dtype) -> None:  # type: ignore[no-untyped-def]
    """float32: to the byte. bf16 under autocast (the CUDA widths: bf16 convolutions, float32 norms):
    to the float32 copies of the norms' bf16 weights, a few hundred bytes the plan leaves out."""
    config = AutoencoderConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=32)
    decoder = Decoder(config).eval().to(dtype)
    patch = config.patch_size
    tokens = torch.sign(torch.randn(1, 32, height // patch, width // patch)).to(dtype)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype), LiveTensors() as live:
        decoder(tokens.clone())
    planned = decoder_bytes(config, height, width, DeviceRules.for_device("cpu", dtype))
    if dtype == torch.float32:
        assert planned == live.peak
    else:
        norm_weights = sum(
            p.numel() * 4 for m in decoder.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()
        )
        assert planned <= live.peak <= planned + norm_weights, (planned, live.peak)


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


# ---------------------------------------------------------------------------------------------
# Rules by device, dtype and quantization; fp8 weights; fitting a 24 GB GPU


def test_bf16_on_the_cpu_is_planned_with_the_cuda_widths() -> None:
    cpu, cuda = DeviceRules.for_device("cpu", torch.bfloat16), DeviceRules.for_device("cuda")
    widths = ("weight", "compute", "norm", "stream", "autocast", "dtype")
    assert [getattr(cpu, w) for w in widths] == [getattr(cuda, w) for w in widths] == [2, 2, 4, 4, True, "bfloat16"]
    assert cuda.sigmoid_temporary and not cpu.sigmoid_temporary  # swish_ works in chunks on the CPU
    assert DeviceRules.for_device("cpu") == CPU and CPU.weight == CPU.compute == 4 and not CPU.autocast
    with pytest.raises(ValueError, match="'int8'"):
        DeviceRules.for_device("cuda", quantization="int8")


@pytest.mark.parametrize("variant", ["64x", "16x"])
def test_fp8_weights_are_at_most_055_of_bf16(variant: str) -> None:
    configs = read_configs(CONFIGS_DIR / f"bitdance-14b-{variant}")
    bf16 = build_plan(configs, "cuda", batches=(1,))
    fp8 = build_plan(configs, "cuda", batches=(1,), quantization="fp8")
    assert fp8.parameters == bf16.parameters
    ratio = fp8.bytes["total"] / bf16.bytes["total"]
    assert 0.52 < ratio <= 0.55, ratio
    # The LLM's 280 linears (13.2 B) and the head's (1.76 B) are one byte each, plus float32 row scales.
    assert fp8.bytes["autoencoder"] == bf16.bytes["autoencoder"] and fp8.bytes["projector"] == bf16.bytes["projector"]
    assert fp8.bytes["llm"] < 0.53 * bf16.bytes["llm"] and fp8.bytes["head"] < 0.51 * bf16.bytes["head"]
    # The largest weight cast to bf16 during its forward (the head's adaLN table, 6C x C) is in the peak.
    assert fp8.dequantization_bytes == 6 * 5120 * 5120 * 2
    assert fp8.worst(1).peak_bytes - fp8.bytes["total"] == bf16.worst(1).peak_bytes - bf16.bytes["total"]


def test_fp8_plan_weights_equal_the_loaded_bytes(tiny16_dir: Path) -> None:
    configs = read_configs(tiny16_dir)
    for dtype in (torch.float32, torch.bfloat16):
        pipe = BitDancePipeline.from_pretrained(tiny16_dir, device="cpu", dtype=dtype, quantization="fp8")
        modules = (pipe.llm, pipe.autoencoder, pipe.head, pipe.projector)
        loaded = sum(t.nbytes for module in modules for t in module.state_dict().values())
        assert build_plan(configs, "cpu", batches=(1,), dtype=dtype, quantization="fp8").bytes["total"] == loaded


def test_fp8_sampling_bytes_match_the_measured_peak(tiny16_dir: Path) -> None:
    """As the float32 test above, with fp8 linears dequantised per forward (CPU, float32 compute)."""
    pipe = BitDancePipeline.from_pretrained(tiny16_dir, device="cpu", quantization="fp8")
    prompt = "a red fox sitting in a snowy forest at sunset"
    requests = [GenerationRequest(prompt, seed=i, guidance_scale=7.5) for i in range(2)]
    with LiveTensors() as live:
        pipe.generate_batch(requests, height=512, width=512, num_inference_steps=1, decode=False)
    configs = read_configs(tiny16_dir)
    plan = build_plan(configs, "cpu", batches=(2,), quantization="fp8")
    assert plan.rules is not None and plan.dequantization_bytes > 0
    generation = Generation(2, True, 512, 512, len(pipe.prompts.conditional_ids(prompt)))
    planned = kv_cache_bytes(configs, generation, plan.rules) + sampling_bytes(configs, generation, plan.rules)
    assert 0.93 <= (planned + plan.dequantization_bytes) / live.peak <= 1.15, (planned, live.peak)


GIB_24_FREE = int(23.5 * GIB)  # a 24 GB card (RTX 3090/4090, L4, A10) after the CUDA context


def test_a_24gb_gpu_fits_one_image_with_fp8_and_refuses_bf16_saying_so() -> None:
    configs = read_configs(CONFIGS_DIR / "bitdance-14b-64x")
    fp8 = build_plan(configs, "cuda", batches=(1,), quantization="fp8")
    square = next(b for b in fp8.batches if (b.height, b.width, b.guidance) == (1024, 1024, True))
    assert square.peak_bytes + CUDA_RESERVE_BYTES <= GIB_24_FREE
    assert check_device_memory(configs, "cuda:0", 1, "fp8", free_bytes=GIB_24_FREE) is None
    refusal = check_device_memory(configs, "cuda:0", 1, None, free_bytes=GIB_24_FREE)
    assert refusal is not None
    assert "with weights in bfloat16" in refusal and "not even one image fits without quantization" in refusal
    assert "set BITDANCE_QUANTIZATION=fp8 (fp8 weights 15.9 GiB: BITDANCE_MAX_BATCH_IMAGES=" in refusal


def test_fp8_refusal_names_the_batch_that_fits() -> None:
    configs = read_configs(CONFIGS_DIR / "bitdance-14b-64x")
    plan = build_plan(configs, "cuda", batches=range(1, 5), quantization="fp8")
    fitting = max(b for b in range(1, 5) if plan.worst(b).peak_bytes + CUDA_RESERVE_BYTES <= GIB_24_FREE)
    assert 1 <= fitting < 4
    refusal = check_device_memory(configs, "cuda:0", 4, "fp8", free_bytes=GIB_24_FREE)
    assert refusal is not None and "fp8 e4m3" in refusal
    assert f"set BITDANCE_MAX_BATCH_IMAGES={fitting} or lower" in refusal and "BITDANCE_QUANTIZATION" not in refusal
    tiny_card = check_device_memory(configs, "cuda:0", 1, "fp8", free_bytes=16 * GIB)
    assert tiny_card is not None and "not even one image fits: free this GPU" in tiny_card


def test_plan_command_line_knows_fp8(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CONFIGS_DIR / "bitdance-14b-64x")
    assert main([path, "--quantization", "fp8"]) == 0
    out = capsys.readouterr().out
    assert "weights in bfloat16, LLM and head linears in fp8 e4m3" in out and "fp8: the largest quantised" in out
    assert main([path, "--device", "cpu", "--dtype", "bfloat16", "--json"]) == 0
    cpu_bf16 = json.loads(capsys.readouterr().out)
    assert cpu_bf16["bytes"]["total"] == 2 * cpu_bf16["parameters"]["total"]
    with pytest.raises(SystemExit) as exit_info:
        main([path, "--quantization", "fp4"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp4'" in capsys.readouterr().err
