"""Speed of the model on random weights: ``python -m bench.model_speed`` (``make bench-model``, ``make bench-gpu``).

Default: the tiny 64x checkpoint and a mid-size one (written once under ``weights/bench-*``), on the
CPU and on CUDA when present: seconds per image at batch 1, images per second at batch 4 and 8, and
where the time goes (LLM, diffusion head, decoder).

``--full-size`` (``make bench-gpu`` = ``--devices cuda --full-size``): BitDance-14B-64x at its real
shapes (``model/configs/bitdance-14b-64x``), random bf16 weights built directly on the device (no
files), 1024x1024, 25 steps, guidance 7.5; also the peak GPU memory of each batch next to what
``model.plan`` predicts. ``--scale 0.05`` shrinks width and depth by that factor (for the CPU: the
same code path, so CI runs it).

With the official code (``--official PATH`` or ``BITDANCE_OFFICIAL_REPO``, an extracted checkout of
github.com/shallowdream204/BitDance), its pipeline runs in its own environment (transformers 4.57,
prepared on first use by :mod:`bench.official.environment`) in a subprocess, on the same weights: the same
checkpoint directory, or for ``--full-size`` the same seeded random weights rebuilt there from the
same config files (checked by weight checksums). Ratio = our time per image / its time per image.
Everything printed is also written as JSON (``--json-out``).

Precision (``--no-precision`` skips it), for every case and for ``--full-size``: the same request
with float32, bf16 (under autocast, the GPU's arithmetic) and fp8 linears, built one after the
other on the same weights: token agreement (all patches, and the first alone), pixel PSNR, seconds
per image and weight bytes of bf16 against float32 (CPU only) and of fp8 against bf16
(:mod:`bench.precision_compare`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.official.client import OFFICIAL_ENV, OfficialPipeline
from bench.precision_compare import compare_precisions
from model.checkpoint.configs import CONFIGS_DIR, read_configs
from model.checkpoint.layout import COMPONENTS
from model.checkpoint.memory_plan import build_plan
from model.checkpoint.modules import MetaModules
from model.checkpoint.random_weights import fill_random_, fingerprint
from model.checkpoint.tiny_checkpoint import write_checkpoint
from model.pipeline import BitDancePipeline, BitDancePipelineOutput, GenerationRequest
from model.precision import default_dtype
from model.prompts import PromptEncoder
from model.quantization import check_quantization, swap_to_fp8

THREADS_ENV = "BITDANCE_TORCH_THREADS"
CACHE_DIR = Path("weights")
JSON_OUT = Path(".run") / "bench" / "model-bench.json"
GUIDANCE = 7.5
WEIGHT_SEED = 1234
PROMPTS = (
    "a red fox sitting in a snowy forest at sunset",
    "an astronaut riding a horse on the moon, detailed illustration",
    "a bowl of ramen on a wooden table, photo",
    "a lighthouse on a cliff during a storm",
    "portrait of an old wizard with a silver beard",
    "a city street at night in the rain, cinematic",
    "a small cat reading a book in a garden",
    "a golden castle above the clouds",
)


@dataclass(frozen=True)
class BenchCase:
    """A random checkpoint written to disk and the image size and step count it is timed at."""

    name: str
    parallel_num: int
    hidden: int
    layers: int
    head_channels: int
    head_depth: int
    height: int
    width: int
    steps: int

    def checkpoint(self, cache_dir: Path) -> Path:
        out = cache_dir / f"bench-{self.name}"
        stamp = out / "bench-case.txt"
        if not stamp.is_file() or stamp.read_text() != repr(self):
            write_checkpoint(out, self.parallel_num, self.hidden, self.layers, self.head_channels, self.head_depth)
            stamp.write_text(repr(self))
        return out


# The tiny case is the default checkpoint of `make run` at its default size. The mid-size LLM (hidden
# 1024, 8 layers) is a 16x checkpoint at 512x512 and 10 steps: a 64x one can only make 1024-px-area
# images, 4x the tokens, which would take the whole bench past ~10 minutes on 2 CPU cores.
CASES = {
    "tiny": BenchCase("tiny-64x", 64, 64, 2, 128, 2, 1024, 1024, 25),
    "mid": BenchCase("mid-16x", 16, 1024, 8, 512, 2, 512, 512, 10),
}


@dataclass
class Timing:
    """Wall seconds of one call, its split over stages, and the peak device memory it reached."""

    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def run_ours(pipe: BitDancePipeline, height: int, width: int, steps: int, batch: int) -> Timing:
    """``batch`` requests of different prompts and seeds in one ``generate_batch`` call."""
    requests = [
        GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=1000 + i, guidance_scale=GUIDANCE) for i in range(batch)
    ]
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    outputs: list[BitDancePipelineOutput] = []

    def generate() -> None:
        outputs.append(
            pipe.generate_batch(requests, height=height, width=width, num_inference_steps=steps, profile=True)
        )

    seconds = timed(generate, pipe.device)
    times = outputs[0].timings
    peak = torch.cuda.max_memory_allocated(pipe.device) if pipe.device.type == "cuda" else None
    return Timing(seconds, {"llm": times.llm, "head": times.head, "decoder": times.decoder}, peak)


def run_official(official: OfficialPipeline, height: int, width: int, steps: int) -> Timing:
    answer = official.generate(PROMPTS[0], height, width, steps, GUIDANCE, seed=1000)
    return Timing(answer["seconds"], answer["stages"], answer["peak_memory_bytes"])


def breakdown(timing: Timing) -> str:
    total = timing.seconds or 1.0
    parts = [f"{name} {sec:.2f}s ({100 * sec / total:.0f}%)" for name, sec in timing.stages.items()]
    return ", ".join(parts)


def median_timing(timings: list[Timing]) -> Timing:
    middle = sorted(timings, key=lambda t: t.seconds)[(len(timings) - 1) // 2]
    return Timing(statistics.median(t.seconds for t in timings), middle.stages, middle.peak_memory_bytes)


def _gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1024**3:.2f} GiB"


def _verdict(ratio: float) -> str:
    return f"{ratio:.2f}x ({'meets' if ratio <= 0.6 else 'misses'} the 0.6x target)"


# ---------------------------------------------------------------------------------------------
# Checkpoint cases (tiny, mid): ours and the official pipeline interleaved on the same files


def batch_one(
    pipe: BitDancePipeline, official: OfficialPipeline | None, case: BenchCase, repeats: int
) -> dict[str, Any]:
    """Ours and the official pipeline alternately, ``repeats`` times each, after one warm-up each."""
    run_ours(pipe, case.height, case.width, 1, 1)
    if official is not None:
        run_official(official, case.height, case.width, 1)
    ours: list[Timing] = []
    theirs: list[Timing] = []
    ratios: list[float] = []
    for _ in range(repeats):
        ours.append(run_ours(pipe, case.height, case.width, case.steps, 1))
        if official is not None:
            theirs.append(run_official(official, case.height, case.width, case.steps))
            ratios.append(ours[-1].seconds / theirs[-1].seconds)
    result: dict[str, Any] = {"ours": median_timing(ours)}
    if official is not None:
        result["official"] = median_timing(theirs)
        result["ratio"] = statistics.median(ratios)
    return result


def bench_case(case: BenchCase, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    path = case.checkpoint(args.cache_dir)
    pipe = BitDancePipeline.from_pretrained(path, device=device)
    official = OfficialPipeline(args.official) if args.official else None
    try:
        if official is not None:
            official.load(path, device=str(device), threads=args.threads)
        print(
            f"\n== {case.name} on {device}: hidden {case.hidden}, {case.layers} layers, "
            f"head {case.head_channels}x{case.head_depth}, {case.width}x{case.height}, "
            f"{case.steps} steps, guidance {GUIDANCE}"
        )
        single = batch_one(pipe, official, case, args.repeats)
    finally:
        if official is not None:
            official.close()
    ours = single["ours"]
    print(f"batch 1   ours      {ours.seconds:7.2f} s/image   [{breakdown(ours)}]")
    result: dict[str, Any] = {"case": case.name, "device": str(device), "batch_1": asdict(ours)}
    if "official" in single:
        theirs = single["official"]
        print(f"batch 1   official  {theirs.seconds:7.2f} s/image   [{breakdown(theirs)}]")
        print(f"          ours/official time per image: {_verdict(single['ratio'])}")
        result.update(official_batch_1=asdict(theirs), ratio=single["ratio"])
    throughput = {1: 1.0 / ours.seconds}
    for batch in args.batches:
        timing = run_ours(pipe, case.height, case.width, case.steps, batch)
        throughput[batch] = batch / timing.seconds
        result[f"batch_{batch}"] = asdict(timing)
        print(f"batch {batch:<3} ours      {throughput[batch]:7.2f} images/s [{breakdown(timing)}]")
    largest = max(throughput)
    scaling = throughput[largest] / throughput[1]
    verdict = "meets" if scaling >= 4 else "misses"
    print(f"          batch {largest} vs batch 1 images/s: {scaling:.2f}x ({verdict} the 4x target)")
    result["images_per_second"] = {str(b): v for b, v in throughput.items()}
    if args.precision:
        del pipe

        def build(dtype: torch.dtype, quantization: str | None) -> BitDancePipeline:
            return BitDancePipeline.from_pretrained(path, device=device, dtype=dtype, quantization=quantization)

        result["precision"] = compare_precisions(build, device, case.height, case.width, case.steps)
    return result


# ---------------------------------------------------------------------------------------------
# Full size: BitDance-14B-64x shapes, random weights built on the device


FULL_SIZE = {"height": 1024, "width": 1024, "steps": 25}
FULL_SIZE_CONFIGS = CONFIGS_DIR / "bitdance-14b-64x"


def _scaled(value: int, scale: float, multiple: int, least: int) -> int:
    return max(least, round(value * scale / multiple) * multiple)


def write_random_configs(out: Path, scale: float) -> Path:
    """Config files of 14B-64x, width and depth times ``scale``, plus a tokenizer: a checkpoint without weights.

    The tokenizer is the tiny checkpoint's (a 1000-token BPE with every BitDance special token): its
    ids fit any vocabulary, and prompts then run a few more tokens than with Qwen's. Both pipelines
    read these files, so both build the same modules.
    """
    stamp = out / "bench-random.txt"
    if stamp.is_file() and stamp.read_text() == repr(scale):
        return out
    write_checkpoint(out, parallel_num=64)  # the tokenizer files; its tiny weights are removed below
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    llm = json.loads((FULL_SIZE_CONFIGS / "config.json").read_text())
    head = json.loads((FULL_SIZE_CONFIGS / "vision_head_config.json").read_text())
    ae = json.loads((FULL_SIZE_CONFIGS / "ae_config.json").read_text())
    if scale != 1.0:
        hidden = _scaled(llm["hidden_size"], scale, llm["head_dim"], llm["head_dim"])
        layers = _scaled(llm["num_hidden_layers"], scale, 1, 1)
        heads = hidden // llm["head_dim"]
        llm.update(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads * llm["num_key_value_heads"] // llm["num_attention_heads"]),
            intermediate_size=_scaled(llm["intermediate_size"], scale, 64, 64),
            max_window_layers=layers,
            layer_types=["full_attention"] * layers,
        )
        head.update(
            ch_cond=hidden,
            ch_latent=_scaled(head["ch_latent"], scale, 128, 128),
            depth_latent=_scaled(head["depth_latent"], scale, head["depth_adanln"], head["depth_adanln"]),
        )
        dd = ae["ddconfig"]
        dd.update(ch=_scaled(dd["ch"], scale, 32, 32), num_res_blocks=_scaled(dd["num_res_blocks"], scale, 1, 1))
    (out / "config.json").write_text(json.dumps(llm, indent=2))
    (out / "vision_head_config.json").write_text(json.dumps(head, indent=2))
    (out / "ae_config.json").write_text(json.dumps(ae, indent=2))
    stamp.write_text(repr(scale))
    return out


def build_random_pipeline(
    config_dir: Path,
    device: torch.device,
    seed: int = WEIGHT_SEED,
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
) -> BitDancePipeline:
    """Our pipeline on ``config_dir``'s shapes with :func:`fill_random_` weights, built on ``device``.

    ``dtype`` defaults to the pipeline's for the device; ``quantization="fp8"`` then quantises the
    random weights as loading quantises a checkpoint's.
    """
    configs = read_configs(config_dir)
    dtype = dtype or default_dtype(device)
    modules = MetaModules.build(configs, dtype)
    for name in COMPONENTS:
        module, prefix = modules.loaded(name)  # the checkpoint's key prefix seeds each tensor's draws
        module.to_empty(device=device)
        fill_random_(module, seed, prefix)
        if check_quantization(quantization) == "fp8":
            swap_to_fp8(name, module)
    pipe = BitDancePipeline(modules.finish(device), PromptEncoder.from_directory(config_dir), device, dtype)
    pipe.quantization = quantization
    return pipe


def our_fingerprints(pipe: BitDancePipeline) -> dict[str, float]:
    modules = {"llm": pipe.llm, "head": pipe.head, "decoder": pipe.autoencoder, "projector": pipe.projector}
    return {name: fingerprint(module) for name, module in modules.items()}


def same_weights(ours: dict[str, float], theirs: dict[str, float]) -> bool:
    return all(abs(ours[k] - theirs[k]) <= 1e-6 * max(abs(ours[k]), 1.0) for k in ours)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_full_size(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Ours at batch 1 (``repeats`` times), 4 and 8; then, ours freed, the official pipeline at batch 1."""
    height, width = FULL_SIZE["height"], FULL_SIZE["width"]
    steps = args.steps or FULL_SIZE["steps"]
    config_dir = write_random_configs(args.cache_dir / f"bench-random-64x-scale{args.scale:g}", args.scale)
    configs = read_configs(config_dir)
    plan = build_plan(configs, str(device), batches=(1, *args.batches))
    planned = {(b.batch, b.height, b.width): b.peak_bytes for b in plan.batches if b.guidance}
    name = "14B-64x" if args.scale == 1.0 else f"14B-64x scaled {args.scale:g}"
    print(
        f"\n== {name} on {device}: hidden {configs.llm.hidden_size}, {configs.llm.num_hidden_layers} layers, "
        f"head {configs.head.ch_latent}x{configs.head.depth_latent}, decoder ch {configs.autoencoder.ch}, "
        f"{plan.parameters['total'] / 1e9:.3f} B parameters in {str(default_dtype(device)).removeprefix('torch.')}, "
        f"{width}x{height}, {steps} steps, guidance {GUIDANCE}"
    )
    started = time.perf_counter()
    pipe = build_random_pipeline(config_dir, device)
    print(f"built our pipeline with random weights on {device} in {time.perf_counter() - started:.1f} s")
    result: dict[str, Any] = {"case": name, "device": str(device), "height": height, "width": width, "steps": steps}
    fingerprints = our_fingerprints(pipe)
    run_ours(pipe, height, width, 1, 1)  # warm-up
    ours = median_timing([run_ours(pipe, height, width, steps, 1) for _ in range(args.repeats)])
    timings = {1: ours}
    for batch in args.batches:
        timings[batch] = run_ours(pipe, height, width, steps, batch)
    for batch, timing in timings.items():
        rate = f"{timing.seconds:7.2f} s/image  " if batch == 1 else f"{batch / timing.seconds:7.2f} images/s"
        memory = (
            f", peak {_gib(timing.peak_memory_bytes)} (plan {_gib(planned[(batch, height, width)])})"
            if timing.peak_memory_bytes is not None
            else ""
        )
        print(f"batch {batch:<3} ours      {rate} [{breakdown(timing)}]{memory}")
        result[f"batch_{batch}"] = {**asdict(timing), "planned_peak_bytes": planned[(batch, height, width)]}
    result["images_per_second"] = {str(b): b / t.seconds for b, t in timings.items()}
    if device.type == "cpu":
        result["peak_rss_bytes"] = _peak_rss_bytes()
        print(f"          peak RSS of this process so far: {_gib(result['peak_rss_bytes'])}")
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.precision:

        def build(dtype: torch.dtype, quantization: str | None) -> BitDancePipeline:
            return build_random_pipeline(config_dir, device, dtype=dtype, quantization=quantization)

        result["precision"] = compare_precisions(build, device, height, width, steps)
    if args.official:
        with OfficialPipeline(args.official) as official:
            started = time.perf_counter()
            loaded = official.load_random(config_dir, config_dir, WEIGHT_SEED, device=str(device), threads=args.threads)
            print(f"built the official pipeline on the same weights in {time.perf_counter() - started:.1f} s")
            if not same_weights(fingerprints, loaded["fingerprints"]):
                theirs_fp = loaded["fingerprints"]
                raise SystemExit(f"the official side's weights differ: ours {fingerprints}, its {theirs_fp}")
            run_official(official, height, width, 1)  # warm-up
            theirs = median_timing([run_official(official, height, width, steps) for _ in range(args.repeats)])
        ratio = ours.seconds / theirs.seconds
        memory = f", peak {_gib(theirs.peak_memory_bytes)}" if theirs.peak_memory_bytes is not None else ""
        print(f"batch 1   official  {theirs.seconds:7.2f} s/image   [{breakdown(theirs)}]{memory}")
        print(f"          ours/official time per image: {_verdict(ratio)} (same weights: checksums agree)")
        result.update(official_batch_1=asdict(theirs), ratio=ratio)
    return result


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.model_speed", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official",
        type=Path,
        default=os.environ.get(OFFICIAL_ENV) or None,
        help=f"extracted checkout of shallowdream204/BitDance (default: ${OFFICIAL_ENV})",
    )
    parser.add_argument("--cases", default="tiny,mid", help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--full-size", action="store_true", help="BitDance-14B-64x shapes, random weights on device")
    parser.add_argument("--scale", type=float, default=1.0, help="with --full-size: width and depth factor")
    parser.add_argument("--steps", type=int, default=None, help="with --full-size: steps (default 25)")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8], help="batch sizes timed after 1")
    parser.add_argument("--repeats", type=int, default=None, help="batch-1 runs per pipeline (default 2, 3 full size)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get(THREADS_ENV, "1")),
        help=f"torch CPU threads, 0 for torch's default (default: ${THREADS_ENV} or 1, as the workers)",
    )
    parser.add_argument(
        "--precision",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare precisions on the same request: bf16 vs float32 (CPU) and fp8 vs bf16 (default: on)",
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the checkpoints are written")
    parser.add_argument("--json-out", type=Path, default=JSON_OUT, help="where the figures are written as JSON")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.full_size else 2
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] * torch.cuda.is_available())
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device is available to this torch")
    started = time.perf_counter()
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average "
        f"{os.getloadavg()[0]:.1f} (wall-clock timings: other work on the machine slows them)"
    )
    if torch.cuda.is_available():
        header += f"; GPU {torch.cuda.get_device_name()}"
    print(header)
    if args.official is None:
        print(
            f"official comparison skipped: pass --official PATH or set {OFFICIAL_ENV} to an extracted "
            "checkout of github.com/shallowdream204/BitDance"
        )
    results = []
    for device in devices:
        if args.full_size:
            results.append(bench_full_size(torch.device(device), args))
        else:
            for name in args.cases.split(","):
                results.append(bench_case(CASES[name], torch.device(device), args))
    elapsed = time.perf_counter() - started
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}; {elapsed:.0f} s in all")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "seconds": elapsed, "results": results}
    args.json_out.write_text(json.dumps(report, indent=2, default=str))
    print(f"figures written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
