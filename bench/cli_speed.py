"""``python -m bench.cli_speed``: the CLI (``bitdance-generate``) against a worker, same input, one run.

Starts a private stack (Redis, API, one CPU worker with the default thread setting) on a tiny 64x
checkpoint, then alternates: one request through the queue (its ``metrics.inference_time``, the
worker's generation seconds) and one ``python -m model.generate`` process with the same input (its
printed generation seconds, measured around the same ``pipe.generate`` call). Prints the medians and
their ratio; ``--torch-default-threads`` adds the CLI as it ran before it set torch's thread count.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from stack.launcher import Stack, ensure_tiny_checkpoint, free_port, python_argv

APP = "fal-ai/bitdance"
INPUT: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "image_size": "square_hd",
    "num_inference_steps": 25,
    "guidance_scale": 7.5,
    "seed": 7,
}
GENERATED = re.compile(r"generated in ([0-9.]+)s")


def worker_seconds(client: httpx.Client) -> float:
    """One request through the queue; the worker's generation time (``metrics.inference_time``)."""
    submitted = client.post(f"/queue/{APP}", json=INPUT).json()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = client.get(submitted["status_url"]).json()
        if status["status"] == "COMPLETED":
            client.get(submitted["response_url"]).raise_for_status()
            return float(status["metrics"]["inference_time"])
        time.sleep(0.05)
    raise TimeoutError("the worker did not finish within 600 s")


def cli_seconds(model: Path, out: Path, *extra: str) -> float:
    """One ``python -m model.generate`` process; the generation seconds it prints."""
    argv = python_argv(
        "model.generate", "--model", str(model), "--prompt", INPUT["prompt"], "--image-size", INPUT["image_size"],
        "--num-inference-steps", str(INPUT["num_inference_steps"]), "--guidance-scale", str(INPUT["guidance_scale"]),
        "--seed", str(INPUT["seed"]), "--out", str(out), *extra,
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    match = GENERATED.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no generation time in the CLI's output: {done.stderr[-500:]}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (alternating), medians compared")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny 64x one)")
    parser.add_argument("--torch-default-threads", action="store_true", help="also time the CLI with --threads 0")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop the stack on the way out
    with tempfile.TemporaryDirectory(prefix="bitdance-cli-bench-") as tmp:
        root = Path(tmp)
        model = args.model or ensure_tiny_checkpoint(root / "tiny-64x", 64)
        settings = Settings(_env_file=None, port=free_port(), torch_threads=1)  # type: ignore[call-arg]
        stack = Stack(settings, model.resolve(), root / "run", log_dir=root)
        stack.start()
        worker, cli = [], []
        try:
            with httpx.Client(base_url=stack.url, timeout=60) as client:
                worker_seconds(client)  # warm-up: first-call costs in the worker process
                for _ in range(args.repeats):
                    worker.append(worker_seconds(client))
                    cli.append(cli_seconds(model, root / "cli.jpg"))
        finally:
            stack.stop()
        default_threads = cli_seconds(model, root / "cli.jpg", "--threads", "0") if args.torch_default_threads else None
    w, c = statistics.median(worker), statistics.median(cli)
    print(f"tiny 64x, 1024x1024, 25 steps, seed 7, CPU, {args.repeats} runs each (median generation seconds):")
    print(f"  worker {w:.2f}s   bitdance-generate {c:.2f}s   CLI/worker {c / w:.2f}x")
    print(f"  worker runs {', '.join(f'{s:.2f}' for s in worker)}; CLI runs {', '.join(f'{s:.2f}' for s in cli)}")
    if default_threads is not None:
        print(f"  CLI with torch's default thread count (--threads 0): {default_threads:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
