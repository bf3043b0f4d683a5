"""``python -m model.plan PATH [--json]``: the memory plan of a checkpoint, from its config files alone.

``--device`` (cuda, cpu), ``--dtype`` (bfloat16, float32) and ``--quantization fp8`` plan the run
the worker would make with the same settings.

``PATH`` is a checkpoint (either layout) or one of the shipped config folders
(``model/configs/bitdance-14b-64x``, ``-16x``). The plan itself is :mod:`model.checkpoint.memory_plan`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from model.checkpoint.configs import CONFIGS_DIR, read_configs
from model.checkpoint.layout import COMPONENTS
from model.checkpoint.memory_plan import DEFAULT_PROMPT_TOKENS, GIB, DeviceRules, MemoryPlan, build_plan
from model.exceptions import CheckpointError
from model.quantization import NO_QUANTIZATION, QUANTIZATIONS

DTYPE_CHOICES = ("bfloat16", "float32")


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:7.2f} GiB"


def print_plan(plan: MemoryPlan, parallel_num: int, device: str, prompt_tokens: int) -> None:
    rules = plan.rules or DeviceRules.for_device(device)
    autocast = ", under bf16 autocast" if rules.autocast else ""
    print(
        f"BitDance {parallel_num}x on {rules.name}: weights in {rules.describe()}{autocast}, "
        f"prompt of {prompt_tokens} tokens"
    )
    for name in (*COMPONENTS, "total"):
        print(f"  {name:<12} {plan.parameters[name] / 1e9:7.3f} B parameters  {_gib(plan.bytes[name])}")
    unloaded = plan.unloaded
    print(
        f"  not loaded: lm_head {unloaded['lm_head'] / 1e9:.3f} B, encoder {unloaded['encoder'] / 1e9:.3f} B parameters"
    )
    if plan.dequantization_bytes:
        dequantized = _gib(plan.dequantization_bytes).strip()
        print(f"  fp8: the largest quantised weight in the compute dtype, {dequantized}, counted in the peak")
    print(f"\n  {'size':>9} {'batch':>5} {'guidance':>8} {'KV cache':>11} {'activations':>11} {'peak':>11}")
    for b in plan.batches:
        print(
            f"  {b.width:>4}x{b.height:<4} {b.batch:>5} {'yes' if b.guidance else 'no':>8} "
            f"{_gib(b.kv_cache_bytes)} {_gib(b.activation_bytes)} {_gib(b.peak_bytes)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.plan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", type=Path, help=f"checkpoint directory (config files suffice), e.g. {CONFIGS_DIR}/bitdance-14b-64x"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--device", default="cuda", help="cuda (bf16 weights, default) or cpu (float32)")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=None, help="weight dtype (default: bfloat16 on cuda, float32 on cpu)"
    )
    parser.add_argument(
        "--quantization",
        choices=(NO_QUANTIZATION, *QUANTIZATIONS),
        default=NO_QUANTIZATION,
        help="fp8: the LLM's and the head's linear weights in fp8 e4m3 with per-channel scales (default: none)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, help="conditional prompt length")
    args = parser.parse_args(argv)
    try:
        configs = read_configs(args.path)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else None
    plan = build_plan(
        configs, args.device, prompt_tokens=args.prompt_tokens, dtype=dtype, quantization=args.quantization
    )
    if args.json:
        print(json.dumps(plan.as_json(), indent=2))
    else:
        print_plan(plan, configs.parallel_num, args.device, args.prompt_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
