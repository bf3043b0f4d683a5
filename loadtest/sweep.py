"""``--sweep RATES``: one open-loop run per rate (each its own process), then a table and a PNG chart
of latency percentiles and goodput against offered load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtest.config import LoadConfig

DROPPED = {"--sweep", "--rate", "--concurrency", "--json", "--csv", "--chart", "--master", "--expect-workers"}


def rates_of(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--sweep wants positive rates separated by commas, got {text!r}")
    return rates


def base_argv(argv: list[str]) -> list[str]:
    """The run's own options without the sweep's (each rate run gets its own --rate and --json)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in DROPPED:
            skip = "=" not in item and name not in ("--master",)
            continue
        out.append(item)
    return out


def run_sweep(argv: list[str], args: argparse.Namespace, config: LoadConfig) -> int:
    rates = rates_of(args.sweep)
    if config.requests is None and config.duration_s is None:
        print("error: --sweep needs --requests or --duration (per rate)", file=sys.stderr)
        return 2
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            path = Path(tmp) / f"rate-{rate:g}.json"
            command = [sys.executable, "-m", "loadtest", *base_argv(argv), "--rate", f"{rate:g}", "--json", str(path)]
            print(f"--- offered load {rate:g} requests/s", flush=True)
            done = subprocess.run(command, check=False)
            if done.returncode != 0 or not path.exists():
                print(f"error: the run at {rate:g} requests/s failed ({done.returncode})", file=sys.stderr)
                return 1
            points.append((rate, json.loads(path.read_text())))
    print(render_table(points))
    if args.json:
        args.json.write_text(json.dumps([{"rate": r, "report": rep} for r, rep in points], indent=2))
    draw_chart(points, args.chart, config.slo_s)
    print(f"chart: {args.chart}")
    return 0


def render_table(points: list[tuple[float, dict[str, Any]]]) -> str:
    lines = [f"{'offered/s':>10}{'done/s':>9}{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}{'errors':>8}{'goodput/s':>11}"]
    for rate, rep in points:
        e2e = rep["phases"].get("e2e", {})
        good = rep.get("goodput", {}).get("requests_per_s", float("nan"))
        lines.append(
            f"{rate:>10g}{rep['throughput']['requests_per_s']:>9.2f}{e2e.get('p50', float('nan')):>9.3f}"
            f"{e2e.get('p90', float('nan')):>9.3f}{e2e.get('p99', float('nan')):>9.3f}"
            f"{rep['requests']['errors']:>8}{good:>11.2f}"
        )
    return "\n".join(lines)


def draw_chart(points: list[tuple[float, dict[str, Any]]], path: Path, slo_s: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r for r, _ in points]
    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in ("p50", "p90", "p99"):
        latency.plot(rates, [rep["phases"].get("e2e", {}).get(key) for _, rep in points], marker="o", label=key)
    if slo_s is not None:
        latency.axhline(slo_s, color="grey", linestyle="--", label=f"SLO {slo_s:g} s")
    latency.set(xlabel="offered load (requests/s)", ylabel="end to end (s)", title="Latency percentiles")
    latency.legend()
    throughput.plot(rates, rates, color="grey", linestyle=":", label="offered")
    throughput.plot(rates, [rep["throughput"]["requests_per_s"] for _, rep in points], marker="o", label="completed")
    if slo_s is not None:
        goodput = [rep.get("goodput", {}).get("requests_per_s") for _, rep in points]
        throughput.plot(rates, goodput, marker="o", label=f"goodput (<= {slo_s:g} s)")
    throughput.set(xlabel="offered load (requests/s)", ylabel="requests/s", title="Throughput and goodput")
    throughput.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
