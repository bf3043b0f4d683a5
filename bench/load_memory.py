"""``python -m bench.load_memory`` (``make bench-load``): host memory needed to load a checkpoint.

Writes a random checkpoint of at least ``--gb`` GB (the tiny architecture widened and deepened, in
the native layout), then loads it with ``BitDancePipeline.from_pretrained`` on the CPU in a fresh
process and prints

    (peak RSS of the loading process - RSS of an idle process that imported the same packages)
    / the checkpoint's bytes on disk

for float32 files loaded as float32, bfloat16 files loaded as bfloat16, and bfloat16 files loaded
with ``quantization="fp8"`` (each linear weight quantised as it is read: the weights held come to
about half the file, plus the one weight being quantised). The goal is <= 1.2: the
weights themselves are 1.0, so at most a fifth more for everything loading holds at once. Each
figure comes from its own subprocess, so nothing else this script did is counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_DIR = Path(".run/bench-load")
HIDDEN = 1024
BYTES_PER_LAYER_PARAMS = 12 * HIDDEN * HIDDEN  # q, o: h*h; k, v: h*h/2 (half the heads); MLP 3 * h * 3h
GOAL = 1.2

# Run in the child processes: the same imports for both, then either nothing or the load.
# Peaks are read from /proc/self/status (VmHWM), which starts afresh at exec; getrusage's ru_maxrss
# would still count the memory of the process that forked this one.
CHILD = """
import json, sys, time
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
import torch
from model.pipeline import BitDancePipeline
result = {"imported_peak_kib": peak_kib()}
if len(sys.argv) > 1:
    torch.set_num_threads(1)
    started = time.perf_counter()
    quantization = sys.argv[3] if len(sys.argv) > 3 else None
    pipe = BitDancePipeline.from_pretrained(
        sys.argv[1], device="cpu", dtype=getattr(torch, sys.argv[2]), quantization=quantization
    )
    modules = (pipe.llm, pipe.head, pipe.autoencoder, pipe.projector)
    result["bytes_held"] = sum(t.nbytes for m in modules for t in m.state_dict().values())
    result["seconds"] = time.perf_counter() - started
    result["bytes_loaded"] = pipe.load_stats.bytes_loaded
result["peak_kib"] = peak_kib()
print(json.dumps(result))
"""


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def write_random_checkpoint(path: Path, gigabytes: float, dtype_name: str) -> int:
    import torch

    from model.checkpoint.tiny_checkpoint import write_checkpoint

    dtype = getattr(torch, dtype_name)
    element = torch.empty((), dtype=dtype).element_size()
    layers = max(1, int(-(-gigabytes * 1e9 // (BYTES_PER_LAYER_PARAMS * element))))
    if path.exists():
        shutil.rmtree(path)
    torch.manual_seed(0)
    write_checkpoint(path, parallel_num=64, hidden=HIDDEN, layers=layers, dtype=dtype)
    return layers


def measure(path: Path, dtype_name: str, quantization: str | None = None) -> dict:
    idle = child()
    loaded = child(str(path), dtype_name, *([quantization] if quantization else []))
    size = checkpoint_bytes(path)
    extra = (loaded["peak_kib"] - idle["peak_kib"]) * 1024
    return {
        "dtype": dtype_name,
        "quantization": quantization,
        "checkpoint_bytes": size,
        "bytes_loaded": loaded["bytes_loaded"],
        "bytes_held": loaded["bytes_held"],
        "idle_rss_bytes": idle["peak_kib"] * 1024,
        "loading_peak_rss_bytes": loaded["peak_kib"] * 1024,
        "ratio": extra / size,
        "seconds": loaded["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size to write (GB, default 1.0)")
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16,bfloat16+fp8",
        help="stored and loaded dtypes to measure; +fp8: loaded with quantization='fp8' (quantised at load)",
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where to write it (default {DEFAULT_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = []
    worst = 0.0
    for spec in args.dtypes.split(","):
        dtype_name, _, quantization = spec.partition("+")
        path = args.dir / f"random-{dtype_name}"
        layers = write_random_checkpoint(path, args.gb, dtype_name)
        try:
            result = measure(path, dtype_name, quantization or None)
        finally:
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
        result["layers"] = layers
        results.append(result)
        worst = max(worst, result["ratio"])
        target = f"{dtype_name}{' + fp8' if quantization else ''}"
        print(
            f"load {dtype_name:>8} -> cpu {target:<15}: checkpoint {result['checkpoint_bytes'] / 1e9:.2f} GB "
            f"({layers} layers of width {HIDDEN}), read {result['bytes_loaded'] / 1e9:.2f} GB in "
            f"{result['seconds']:.1f} s, holding {result['bytes_held'] / 1e9:.2f} GB; peak RSS "
            f"{result['loading_peak_rss_bytes'] / 1e9:.2f} GB, idle process {result['idle_rss_bytes'] / 1e9:.2f} GB; "
            f"(peak - idle) / checkpoint = {result['ratio']:.3f}"
        )
    verdict = "within" if worst <= GOAL else "ABOVE"
    print(f"worst load RSS ratio {worst:.3f}: {verdict} the goal of {GOAL}")
    if args.json:
        args.json.write_text(json.dumps({"goal": GOAL, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
