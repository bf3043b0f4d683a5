"""``python -m bench.fleet_goals`` (``make bench-loadtest``): the simulated fleet's goals, measured and printed.

Starts its own stack on loopback as ``make run MODEL=simulated SLOTS=64`` does, with the ``flat-2s``
profile (every request takes exactly 2.0 s of simulated service time), then runs the kit twice:

A. 500 closed-loop clients on the status stream, 3,000 requests: errors and lost requests, and the
   kit's figures against the server's /metrics (requests completed, inference seconds);
B. half as many clients as slots, so that no request waits for a slot: the queue's own overhead,
   i.e. time to the result (end to end less the image download) minus the 2.0 s of service time.
   Its clients start within ``SERVICE_S`` of each other (``--start-jitter``), as independent clients
   do: started in the same instant (or in Locust's spawn batches), every client's requests would stay
   in step for the whole run with the profile's equal service times, and the figures would measure
   the bursts (32 submits, streams and generations at once on 2 cores), not what the queue adds.

Goals (issue 10): 0 errors and 0 lost in A; overhead p50 <= 50 ms and p99 <= 250 ms in B; kit vs
server within 2 %. Everything here shares the machine with the kit itself (and with whatever else
runs on it): the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.settings import Settings
from loadtest.report import summarize
from stack.launcher import Stack, free_port

PROFILE = "flat-2s"
SERVICE_S = 2.0  # the flat-2s profile's service time
GOAL_P50_S, GOAL_P99_S, GOAL_AGREEMENT = 0.050, 0.250, 0.02


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_goals", description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--clients", type=int, default=500, help="phase A: concurrent status-stream clients")
    p.add_argument("--requests", type=int, default=3000, help="phase A: requests")
    p.add_argument("--overhead-clients", type=int, help="phase B: concurrent clients (default: slots / 2)")
    p.add_argument("--overhead-requests", type=int, default=480, help="phase B: requests")
    p.add_argument("--keep", type=Path, help="keep the reports and logs in this directory")
    return p.parse_args(argv)


def run_kit(url: str, out: Path, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "loadtest", "--url", url, *args, "--json", str(out.with_suffix(".json"))]
    command += ["--csv", str(out)]
    subprocess.run(command, check=True)
    report: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    return report


def overhead_after_service(requests_csv: Path) -> dict[str, Any]:
    """Per ok request: end to end less the download, less the 2.0 s of simulated service time."""
    values = []
    with requests_csv.open() as handle:
        for row in csv.DictReader(handle):
            if not row["error"] and row["e2e_s"]:
                values.append(float(row["e2e_s"]) - float(row["download_s"] or 0.0) - SERVICE_S)
    return summarize(values)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overhead_clients = args.overhead_clients or max(args.slots // 2, 1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-loadtest-"))
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        port=free_port(), simulated_slots=args.slots, simulated_profile=PROFILE, api_keys=[], max_queue_length=None
    )
    stack = Stack(settings, Path("simulated"), root / "stack", log_dir=root)
    print(f"starting redis, one simulated worker ({args.slots} slots, {PROFILE}) and the API; logs in {root}")
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        stack.start()
        url = stack.url
        print(f"\n=== A. {args.clients} status-stream clients, {args.requests} requests", flush=True)
        a = run_kit(url, root / "phase-a", "--concurrency", str(args.clients), "--requests", str(args.requests),
                    "--status", "stream", "--spawn-rate", "100", "--slo-s", "60")  # fmt: skip
        print(f"\n=== B. {overhead_clients} clients on {args.slots} slots (none waits for a slot), "
              f"{args.overhead_requests} requests", flush=True)  # fmt: skip
        b = run_kit(url, root / "phase-b", "--concurrency", str(overhead_clients),
                    "--requests", str(args.overhead_requests), "--status", "stream",
                    "--start-jitter", str(SERVICE_S))  # fmt: skip
    finally:
        stack.stop()
    load_after = os.getloadavg()
    over = overhead_after_service(root / "phase-b_requests.csv")
    agreement = a.get("server", {}).get("agreement", {})
    lost, errors = a["requests"]["lost"], a["requests"]["errors"]
    print("\n=== Goals (issue 10), one 2-core machine shared with the kit and other work")
    before, after = ("/".join(f"{v:.1f}" for v in load) for load in (load_before, load_after))
    print(f"load average (1/5/15 min) before {before}, after {after}; {time.monotonic() - started:.0f} s in all")
    print(f"A: {a['requests']['ok']}/{a['requests']['sent']} ok, {errors} errors, {lost} lost "
          f"-> 0 errors and 0 lost: {verdict(errors == 0 and lost == 0)}")  # fmt: skip
    print(f"A: throughput {a['throughput']['requests_per_s']:.2f} requests/s "
          f"(ceiling {args.slots / SERVICE_S:.0f}/s), end to end p50 {a['phases']['e2e']['p50']:.2f} s")  # fmt: skip
    print(f"B: queue overhead over the 2.0 s service time: p50 {1000 * over['p50']:.1f} ms, "
          f"p99 {1000 * over['p99']:.1f} ms, max {1000 * over['max']:.1f} ms (n={over['count']}) -> "
          f"p50 <= 50 ms: {verdict(over['p50'] <= GOAL_P50_S)}, "
          f"p99 <= 250 ms: {verdict(over['p99'] <= GOAL_P99_S)}")  # fmt: skip
    kit_over = b["queue_overhead"]
    print(f"B: to result minus the reported inference_time: p50 {1000 * kit_over['p50']:.1f} ms, "
          f"p99 {1000 * kit_over['p99']:.1f} ms")  # fmt: skip
    for name, entry in agreement.items():
        diff = entry["relative_difference"]
        print(f"A: kit vs server {name}: {entry['kit']:.2f} vs {entry['server']:.2f} ({100 * diff:+.2f} %) -> "
              f"within 2 %: {verdict(abs(diff) <= GOAL_AGREEMENT)}")  # fmt: skip
    summary = {"a": a, "b": b, "overhead_after_service": over, "load_before": load_before, "load_after": load_after}
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
