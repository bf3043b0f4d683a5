"""The same request in several precisions, compared: what ``bench.model_speed`` prints under "precision".

Each precision is a pipeline on the same weights (float32, bf16 under autocast, bf16 with fp8
linears): built one after the other (only one is in memory at a time), warmed up, then run once on
the same request. Against its reference it reports the share of token bits that agree (the
sampled patches feed back into the LLM, so a first difference spreads to every later patch: on
random weights two unrelated images agree on about half), the agreement of the first patch alone
(before any feedback), the pixel PSNR (and that of the decoder alone, fed the reference's tokens:
the pixels' own precision, apart from the tokens'), the seconds per image, and the bytes of the
loaded weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model.checkpoint.configs import CONFIGS_DIR, read_configs
from model.checkpoint.memory_plan import GIB, build_plan
from model.pipeline import BitDancePipeline, GenerationRequest

REQUEST = GenerationRequest("a red fox sitting in a snowy forest at sunset", seed=1000, guidance_scale=7.5)
BYTES_GOAL = 0.55  # fp8 weight bytes / bf16 weight bytes
# (label, dtype, quantization, reference label); a reference must come before what it is compared with
CPU_PRECISIONS = (
    ("float32", torch.float32, None, None),
    ("bf16", torch.bfloat16, None, "float32"),
    ("fp8", torch.bfloat16, "fp8", "bf16"),
)
CUDA_PRECISIONS = (("bf16", torch.bfloat16, None, None), ("fp8", torch.bfloat16, "fp8", "bf16"))

PipelineBuilder = Callable[[torch.dtype, str | None], BitDancePipeline]


@dataclass
class PrecisionRun:
    label: str
    seconds: float
    weight_bytes: int
    tokens: torch.Tensor
    image: np.ndarray


def weight_bytes(pipe: BitDancePipeline) -> int:
    """Bytes of the loaded weights (fp8 weights and their scales included; no non-persistent buffer)."""
    modules = (pipe.llm, pipe.head, pipe.autoencoder, pipe.projector)
    return sum(t.nbytes for module in modules for t in module.state_dict().values())


def full_size_fp8_bytes() -> dict[str, float]:
    """fp8 / bf16 weight bytes of BitDance-14B-64x from ``model.plan`` (which equals the loaded bytes: tests).

    The benchmark's own weights are far smaller, and there the embeddings (never quantised) weigh
    more: its ratio is above the full-size one.
    """
    configs = read_configs(CONFIGS_DIR / "bitdance-14b-64x")
    bf16 = build_plan(configs, "cuda", batches=(1,)).bytes["total"]
    fp8 = build_plan(configs, "cuda", batches=(1,), quantization="fp8").bytes["total"]
    verdict = "meets" if fp8 / bf16 <= BYTES_GOAL else "misses"
    print(
        f"  fp8 at full size (BitDance-14B-64x, model.plan): weights {fp8 / GIB:.2f} GiB vs bf16 {bf16 / GIB:.2f} GiB, "
        f"x{fp8 / bf16:.3f} ({verdict} the {BYTES_GOAL} goal)"
    )
    return {"fp8_bytes": float(fp8), "bf16_bytes": float(bf16), "weight_bytes_ratio": fp8 / bf16}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of token bits that are equal."""
    return (a == b).float().mean().item()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_precision(pipe: BitDancePipeline, label: str, height: int, width: int, steps: int) -> PrecisionRun:
    pipe.generate_batch([REQUEST], height=height, width=width, num_inference_steps=1, decode=False)  # warm-up
    started = time.perf_counter()
    output = pipe.generate_batch([REQUEST], height=height, width=width, num_inference_steps=steps, return_tokens=True)
    seconds = time.perf_counter() - started
    assert output.tokens is not None
    return PrecisionRun(label, seconds, weight_bytes(pipe), output.tokens, np.asarray(output.images[0][0]))


def compare_precisions(
    build: PipelineBuilder, device: torch.device, height: int, width: int, steps: int
) -> dict[str, dict[str, float]]:
    """Each precision of the device against its reference; prints one line each and returns the figures."""
    precisions = CPU_PRECISIONS if device.type == "cpu" else CUDA_PRECISIONS
    runs: dict[str, PrecisionRun] = {}
    figures: dict[str, dict[str, float]] = {}
    print(f"precision on {device} ({width}x{height}, {steps} steps, guidance {REQUEST.guidance_scale}, one image):")
    for label, dtype, quantization, reference in precisions:
        pipe = build(dtype, quantization)
        parallel_num = pipe.parallel_num
        runs[label] = run_precision(pipe, label, height, width, steps)
        if reference is not None:  # the reference's tokens through this precision's decoder
            decoded = pipe.decode(runs[reference].tokens, height, width)[0].numpy()
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        run = runs[label]
        line = f"  {label:<8} {run.seconds:7.2f} s/image, weights {run.weight_bytes / 2**20:9.2f} MiB"
        if reference is None:
            print(line)
            continue
        base = runs[reference]
        result = {
            "token_agreement": agreement(run.tokens, base.tokens),
            "first_patch_agreement": agreement(run.tokens[:, :parallel_num], base.tokens[:, :parallel_num]),
            "psnr_db": psnr(run.image, base.image),
            "decoder_psnr_db": psnr(decoded, base.image),
            "seconds_ratio": run.seconds / base.seconds,
            "weight_bytes_ratio": run.weight_bytes / base.weight_bytes,
        }
        figures[f"{label}_vs_{reference}"] = result
        line += (
            f"; vs {reference}: token agreement {result['token_agreement']:.4f} "
            f"(first patch {result['first_patch_agreement']:.4f}), PSNR {result['psnr_db']:.2f} dB "
            f"(decoder alone, on the same tokens: {result['decoder_psnr_db']:.2f} dB), "
            f"time x{result['seconds_ratio']:.2f}, weight bytes x{result['weight_bytes_ratio']:.3f}"
        )
        print(line)
    if "fp8" in runs:
        figures["full_size"] = full_size_fp8_bytes()
    figures["seconds"] = {label: run.seconds for label, run in runs.items()}
    figures["weight_bytes"] = {label: float(run.weight_bytes) for label, run in runs.items()}
    return figures
