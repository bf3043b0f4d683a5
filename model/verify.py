"""``python -m model.verify PATH``: check a downloaded checkpoint completely without loading its weights.

Exit status 0 with a summary (layout, variant, parameters and bytes per module) when the checkpoint
is sound; 1 with one line per problem, each naming the file and what is wrong. The checks are
:func:`model.checkpoint.verification.verify_checkpoint`'s; workers run them before loading and
refuse to start with the same lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint.verification import Report, verify_checkpoint


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def summary_lines(report: Report) -> list[str]:
    sizes = ", ".join(f"{w}x{h}" for h, w in report.sizes)
    lines = [
        f"checkpoint: {report.path}",
        f"layout: {report.layout.value if report.layout else '?'}",
        f"variant: parallel_num {report.parallel_num} ({report.parallel_num}x); serves {len(report.sizes)} sizes "
        f"(WxH): {sizes}",
    ]
    if report.configs is not None:
        rope = report.configs.rope
        lines.append(f"rope: {rope.describe()} (from {rope.source} in {report.configs.llm_config_name})")
    for m in report.modules:
        dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(m.dtypes.items()))
        lines.append(
            f"{m.name:<12}{human_count(m.parameters):>10} parameters {human_bytes(m.bytes):>12}  [{dtypes}]  {m.label}"
        )
    for m in report.modules:
        if m.fp8_weights:
            lines.append(
                f"{m.name}: {m.fp8_weights} linear weights pre-quantised in fp8 with their scales: kept in fp8 with "
                "quantization 'fp8', else dequantised to the compute dtype at load"
            )
    total_params = sum(m.parameters for m in report.modules)
    total_bytes = sum(m.bytes for m in report.modules)
    lines.append(f"{'total':<12}{human_count(total_params):>10} parameters {human_bytes(total_bytes):>12}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.verify", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="checkpoint directory (native or diffusers layout)")
    args = parser.parse_args(argv)
    report = verify_checkpoint(args.path)
    for note in report.notes:
        print(f"note: {note}")
    if not report.sound:
        for problem in report.problems:
            print(problem)
        print(f"FAILED: {len(report.problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    for line in summary_lines(report):
        print(line)
    print(f"OK: {args.path} is a sound BitDance checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
