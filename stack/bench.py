"""``python -m stack.bench``: API throughput and the queue path's overhead, on loopback only.

Starts its own redis-server, API and (for the overhead) one worker on the tiny 16x checkpoint with
``stack.launcher``; measures submit and status requests per second with bounded concurrent loops,
then the added latency of a sync run (``POST /fal-ai/bitdance``) over a direct ``pipe.generate`` of
the same request in this process. A benchmark script: it may import the model; the API never does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from server.settings import Settings
from stack.launcher import (
    RedisProcess,
    base_url,
    ensure_tiny_checkpoint,
    free_port,
    start_api,
    start_worker,
    wait_until_ready,
)

KEY = "bench-key"
APP = "fal-ai/bitdance"
BODY = {"prompt": "a red fox in the snow", "image_size": "square", "num_inference_steps": 10, "seed": 3}


async def rate(url: str, method: str, path: str, total: int, concurrency: int, json: Any = None) -> float:
    """Requests per second of ``total`` calls with ``concurrency`` in flight; every answer must be 2xx."""
    headers = {"Authorization": f"Key {KEY}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        remaining = total

        async def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.request(method, path, json=json)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def direct_seconds(model: Path, repeats: int) -> float:
    import torch

    from model.pipeline import BitDancePipeline

    torch.set_num_threads(1)
    pipe = BitDancePipeline.from_pretrained(model)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipe.generate(str(BODY["prompt"]), 512, 512, num_inference_steps=10, seed=3)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_seconds(url: str, repeats: int) -> float:
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY}"}, timeout=600) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            client.post(f"/{APP}", json=BODY).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="calls per throughput measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="generations per latency measurement")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny 16x one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bitdance-bench-") as tmp:
        root = Path(tmp)
        redis_server = RedisProcess(root / "redis", log_path=root / "redis.log").start()
        settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
            _env_file=None, port=free_port(), redis_url=redis_server.url, storage_dir=root / "storage",
            api_keys=[KEY], torch_threads=1, poll_interval_s=0.01,
        )  # fmt: skip
        api = start_api(settings, log_path=root / "api.log")
        processes = [api]
        try:
            url = base_url(settings)
            wait_until_ready(url, processes=(api,))
            submit_rps = asyncio.run(rate(url, "POST", f"/queue/{APP}", args.requests, args.concurrency, BODY))
            rid = httpx.post(f"{url}/queue/{APP}", json=BODY, headers={"Authorization": f"Key {KEY}"}).json()
            status_path = f"/queue/{APP}/requests/{rid['request_id']}/status"
            status_rps = asyncio.run(rate(url, "GET", status_path, args.requests, args.concurrency))
            print(f"submit: {submit_rps:.0f} requests/s  status: {status_rps:.0f} requests/s "
                  f"({args.requests} calls, {args.concurrency} in flight, loopback)")  # fmt: skip
            redis.Redis.from_url(redis_server.url).flushall()
            model = args.model or ensure_tiny_checkpoint(root / "tiny-16x", 16)
            processes.append(start_worker(settings, model, log_path=root / "worker.log"))
            wait_until_ready(url, min_workers=1, processes=tuple(processes))
            run_seconds(url, 1)  # warm-up: safety checker and first-call costs
            queued = run_seconds(url, args.repeats)
            direct = direct_seconds(model, args.repeats)
            print(f"512x512, 10 steps: direct pipe.generate {direct:.3f}s, sync run through the queue "
                  f"{queued:.3f}s, added {queued - direct:+.3f}s ({args.repeats} runs, median)")  # fmt: skip
        finally:
            for process in processes:
                process.stop()
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
