"""Speed of the model package on random checkpoints: ``python -m model.bench`` (``make bench-model``).

For the tiny 64x checkpoint and a mid-size one (both written once under ``weights/bench-*``), prints
seconds per image at batch 1, images per second at batch 4 and 8, and where the time goes (LLM,
diffusion head, decoder), on the CPU and on CUDA when a GPU is present.

With the official code (``--official PATH`` or the ``BITDANCE_OFFICIAL_REPO`` environment variable,
pointing at an extracted checkout of github.com/shallowdream204/BitDance), the official pipeline is
loaded on the same weights in the same process and timed interleaved with ours, for the ratio of
our time per image to its time. That code is imported from the given path at run time only; where
flash-attn is not installed, a stand-in calling PyTorch SDPA is put in its place. On the CPU the
official LLM is loaded in float32 (upstream loads it in bfloat16), as ours is.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import model.llm  # noqa: F401 - decides on flash-attn before any stand-in is installed
from model.pipeline import BitDancePipeline, GenerationRequest
from model.tiny import write_checkpoint

OFFICIAL_ENV = "BITDANCE_OFFICIAL_REPO"
THREADS_ENV = "BITDANCE_TORCH_THREADS"
CACHE_DIR = Path("weights")
GUIDANCE = 7.5
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
    """A random checkpoint and the image size and step count it is timed at."""

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
    """Wall seconds of one call and its split over stages."""

    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def run_ours(pipe: BitDancePipeline, case: BenchCase, batch: int, steps: int | None = None) -> Timing:
    """``batch`` requests of different prompts and seeds in one ``generate_batch`` call."""
    requests = [
        GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=1000 + i, guidance_scale=GUIDANCE) for i in range(batch)
    ]
    steps = steps or case.steps
    pipe.profile = True
    seconds = timed(lambda: pipe.generate_batch(requests, case.height, case.width, steps), pipe.device)
    times = pipe.last_times
    return Timing(seconds, {"llm": times.llm, "head": times.head, "decoder": times.decoder})


# ---------------------------------------------------------------------------------------------
# The official pipeline, imported from a checkout at run time


def _sdpa_flash_attn() -> types.ModuleType:
    """A ``flash_attn`` module whose ``flash_attn_func`` runs PyTorch SDPA, for machines without it."""
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale
        )
        return out.transpose(1, 2)

    setattr(module, "flash_attn_func", flash_attn_func)  # noqa: B010 - a module built at run time
    return module


def import_official(repo: Path) -> types.ModuleType:
    """``modeling.t2i_pipeline`` of the checkout, with an SDPA stand-in for a missing flash-attn."""
    if not (repo / "modeling" / "t2i_pipeline.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of shallowdream204/BitDance (no modeling/t2i_pipeline.py)")
    if "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is None:
        sys.modules["flash_attn"] = _sdpa_flash_attn()
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return importlib.import_module("modeling.t2i_pipeline")


def load_official(repo: Path, path: Path, device: torch.device):
    """The official ``BitDanceT2IPipeline`` on ``path``; on the CPU its LLM is loaded in float32, as ours.

    Upstream loads the LLM with ``torch_dtype=bfloat16``; converting after loading would keep the
    bfloat16 rounding of the weights, so ``from_pretrained`` is asked for float32 instead.
    """
    official: Any = import_official(repo)  # upstream's module, known only at run time
    upstream: Any = official.Qwen3ForCausalLM

    class Float32Qwen3(upstream):  # type: ignore[valid-type,misc]
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            kwargs.pop("torch_dtype", None)
            return upstream.from_pretrained(*args, **kwargs, dtype=torch.float32)

    if device.type == "cpu":
        official.Qwen3ForCausalLM = Float32Qwen3
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return official.BitDanceT2IPipeline(str(path), device=str(device))
    finally:
        official.Qwen3ForCausalLM = upstream


class OfficialRunner:
    """The official ``BitDanceT2IPipeline`` on a checkpoint, timed per stage (LLM = the rest)."""

    def __init__(self, repo: Path, path: Path, device: torch.device):
        self.device = device
        self.pipe = load_official(repo, path, device)
        self.stages: dict[str, float] = {}
        self._wrap(self.pipe.vision_head, "sample", "head")
        self._wrap(self.pipe.ae, "decode", "decoder")

    def _wrap(self, owner: object, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            _sync(self.device)
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            _sync(self.device)
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - started
            return out

        setattr(owner, name, wrapper)

    def run(self, case: BenchCase, steps: int | None = None) -> Timing:
        self.stages = {}
        quiet = contextlib.redirect_stderr(io.StringIO())  # the official progress bar
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds = timed(
                lambda: self.pipe.generate(
                    PROMPTS[0],
                    case.height,
                    case.width,
                    steps or case.steps,
                    GUIDANCE,
                    num_images=1,
                    seed=1000,
                ),
                self.device,
            )
        rest = seconds - sum(self.stages.values())
        return Timing(seconds, {"llm": rest, **self.stages})


# ---------------------------------------------------------------------------------------------
# Measurements and report


def breakdown(timing: Timing) -> str:
    total = timing.seconds or 1.0
    parts = [f"{name} {sec:.2f}s ({100 * sec / total:.0f}%)" for name, sec in timing.stages.items()]
    return ", ".join(parts)


def median_timing(timings: list[Timing]) -> Timing:
    middle = sorted(timings, key=lambda t: t.seconds)[(len(timings) - 1) // 2]
    return Timing(statistics.median(t.seconds for t in timings), middle.stages)


def batch_one(pipe: BitDancePipeline, official: OfficialRunner | None, case: BenchCase, repeats: int) -> dict:
    """Ours and the official pipeline alternately, ``repeats`` times each, after one warm-up each."""
    run_ours(pipe, case, 1, steps=1)
    if official is not None:
        official.run(case, steps=1)
    ours: list[Timing] = []
    theirs: list[Timing] = []
    ratios: list[float] = []
    for _ in range(repeats):
        ours.append(run_ours(pipe, case, 1))
        if official is not None:
            theirs.append(official.run(case))
            ratios.append(ours[-1].seconds / theirs[-1].seconds)
    result: dict[str, Any] = {"ours": median_timing(ours)}
    if official is not None:
        result["official"] = median_timing(theirs)
        result["ratio"] = statistics.median(ratios)
    return result


def bench_case(case: BenchCase, device: torch.device, args: argparse.Namespace) -> None:
    path = case.checkpoint(args.cache_dir)
    pipe = BitDancePipeline.from_pretrained(path, device=device)
    official = OfficialRunner(args.official, path, device) if args.official else None
    print(
        f"\n== {case.name} on {device}: hidden {case.hidden}, {case.layers} layers, "
        f"head {case.head_channels}x{case.head_depth}, {case.width}x{case.height}, "
        f"{case.steps} steps, guidance {GUIDANCE}"
    )
    single = batch_one(pipe, official, case, args.repeats)
    ours = single["ours"]
    print(f"batch 1   ours      {ours.seconds:7.2f} s/image   [{breakdown(ours)}]")
    if official is not None:
        theirs = single["official"]
        print(f"batch 1   official  {theirs.seconds:7.2f} s/image   [{breakdown(theirs)}]")
        verdict = "meets" if single["ratio"] <= 0.6 else "misses"
        print(f"          ours/official time per image: {single['ratio']:.2f}x ({verdict} the 0.6x target)")
    throughput = {1: 1.0 / ours.seconds}
    for batch in args.batches:
        timing = run_ours(pipe, case, batch)
        throughput[batch] = batch / timing.seconds
        print(f"batch {batch:<3} ours      {throughput[batch]:7.2f} images/s [{breakdown(timing)}]")
    largest = max(throughput)
    scaling = throughput[largest] / throughput[1]
    verdict = "meets" if scaling >= 4 else "misses"
    print(f"          batch {largest} vs batch 1 images/s: {scaling:.2f}x ({verdict} the 4x target)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official",
        type=Path,
        default=os.environ.get(OFFICIAL_ENV) or None,
        help=f"extracted checkout of shallowdream204/BitDance (default: ${OFFICIAL_ENV})",
    )
    parser.add_argument("--cases", default="tiny,mid", help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8], help="batch sizes timed after 1")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved batch-1 runs per pipeline")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get(THREADS_ENV, "1")),
        help=f"torch CPU threads, 0 for torch's default (default: ${THREADS_ENV} or 1, as the workers)",
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the checkpoints are written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] * torch.cuda.is_available())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average "
        f"{os.getloadavg()[0]:.1f} (wall-clock timings: other work on the machine slows them)"
    )
    if args.official is None:
        print(
            f"official comparison skipped: pass --official PATH or set {OFFICIAL_ENV} to an extracted "
            "checkout of github.com/shallowdream204/BitDance"
        )
    for device in devices:
        for name in args.cases.split(","):
            bench_case(CASES[name], torch.device(device), args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
