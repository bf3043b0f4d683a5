"""``python -m bench.api_capacity`` (``make bench-api``): the API's capacity beside a hello-world FastAPI app.

Everything runs on loopback, started by this script with ``stack.launcher``'s pieces: a private
redis-server, the API, and a one-route FastAPI app served by the same uvicorn with the same options
(``server.__main__.uvicorn_options``, same logging). In one run it prints:

1. requests/s and latency percentiles of hello-world, status, health and submit under ``wrk``
   (same connections and duration for each; hello-world measured before and after, its mean is the
   baseline of the ratios). The API leaves answered status polls out of its access log by default
   (``BITDANCE_LOG_STATUS_POLLS``) while hello-world logs every request: status is also measured on
   an API that logs its polls, for the like-for-like ratio;
2. status latency with N pollers (fal's Python client polls every 100 ms) while a worker generates;
3. N open status streams: the API's CPU while nothing changes, and how long a change (a worker's
   log entry, a cancel) takes to reach its stream;
4. status requests/s of 1 and of 2 API processes on one port (``python -m server --workers 2``);
5. the queue path's added latency: a sync run over a direct ``pipe.generate`` of the same request.

A benchmark script: it may import the model (step 5); the API never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.http_load import (
    StatusStream,
    WrkResult,
    cpu_seconds,
    lua_script,
    open_stream,
    process_tree,
    run_wrk,
)
from core.settings import Settings
from stack.launcher import (
    ManagedProcess,
    RedisProcess,
    _spawn,
    base_url,
    ensure_tiny_checkpoint,
    free_port,
    python_argv,
    start_api,
    start_worker,
    wait_until_ready,
)

KEY = "bench-key"
APP = "fal-ai/bitdance"
BODY = {"prompt": "a red fox in the snow", "image_size": "square", "num_inference_steps": 10, "seed": 3}
AUTH = {"Authorization": f"Key {KEY}"}
HELLO_PATH = "/hello"


# --- the hello-world app ------------------------------------------------------------------------


def serve_hello(port: int) -> None:
    """A one-route FastAPI app on the API's uvicorn options (same loop, HTTP parser and logging)."""
    import uvicorn
    from fastapi import FastAPI

    from core.logconfig import configure_logging
    from server.__main__ import uvicorn_options

    settings = Settings(_env_file=None, port=port)  # type: ignore[call-arg]  # pydantic-settings' init-only arg
    configure_logging(settings.log_level, settings.log_format)
    app = FastAPI()

    @app.get(HELLO_PATH)
    async def hello() -> dict[str, str]:
        return {"message": "Hello World"}

    uvicorn.run(app, **uvicorn_options(settings, "127.0.0.1"))


def start_hello(port: int, log_path: Path) -> ManagedProcess:
    return _spawn("hello-world", python_argv("bench.api_capacity", "--serve-hello", str(port)), None, log_path)


def wait_for(url: str, process: ManagedProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_running():
            raise RuntimeError(f"{process.name} exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


# --- helpers ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """The running pieces and the knobs of one benchmark run."""

    root: Path
    redis_server: RedisProcess
    settings: Settings
    duration_s: float
    connections: int

    @property
    def url(self) -> str:
        return base_url(self.settings)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def submit(self, count: int, body: dict[str, Any] | None = None) -> list[str]:
        """``count`` requests through the API (32 in flight); their ids, in submit order."""

        async def go() -> list[str]:
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=self.url, headers=AUTH, limits=limits, timeout=60) as client:
                gate = asyncio.Semaphore(32)

                async def one() -> str:
                    async with gate:
                        response = await client.post(f"/queue/{APP}", json=body or BODY)
                        response.raise_for_status()
                        return str(response.json()["request_id"])

                return list(await asyncio.gather(*(one() for _ in range(count))))

        return asyncio.run(go())

    def wrk(self, path: str, *, url: str | None = None, connections: int | None = None, **script: Any) -> WrkResult:
        return run_wrk(
            (url or self.url) + path,
            connections=connections or self.connections,
            duration_s=self.duration_s,
            script=lua_script(**script),
        )


def status_path(rid: str) -> str:
    return f"/queue/{APP}/requests/{rid}/status"


@contextmanager
def api_process(bench: Bench, name: str, **overrides: Any) -> Iterator[tuple[str, ManagedProcess]]:
    """Another API on its own port with these setting overrides (e.g. ``api_workers=2``)."""
    settings = bench.settings.model_copy(update={"port": free_port(), **overrides})
    api = start_api(settings, log_path=bench.root / f"{name}.log")
    try:
        url = base_url(settings)
        wait_until_ready(url, processes=(api,))
        yield url, api
    finally:
        api.stop()


def row(name: str, result: WrkResult, baseline: float | None) -> str:
    ratio = f"{result.requests_per_s / baseline:5.2f}" if baseline else "  -  "
    failed = f"   FAILED {result.failures}: {result.failure_kinds}" if result.failures else ""
    return f"  {name:<34} {result.requests_per_s:9.0f} {ratio}   {result.latency():>22}{failed}"


def header_row() -> str:
    return f"  {'':<34} {'req/s':>9} {'ratio':>5}   {'latency ms p50/p90/p99':>22}"


# --- the measurements ---------------------------------------------------------------------------


def measure_rates(bench: Bench, hello_url: str, model: Path) -> None:
    """Hello-world, status, health and submit, side by side with the same wrk settings.

    /health answers 200 only with a live worker, so one idles during that run (and only then: it
    would start generating the submitted requests)."""
    rid = bench.submit(1)[0]
    auth = dict(AUTH)
    hello_before = bench.wrk(HELLO_PATH, url=hello_url, headers={})
    status = bench.wrk(status_path(rid), headers=auth)
    with api_process(bench, "api-polls-logged", log_status_polls=True) as (logged_url, _):
        status_logged = bench.wrk(status_path(rid), url=logged_url, headers=auth)
    bench.redis().flushall()
    worker = start_worker(bench.settings, model, log_path=bench.root / "worker-idle.log")
    try:
        wait_until_ready(bench.url, min_workers=1, timeout_s=300, processes=(worker,))
        health = bench.wrk("/health", headers={})
    finally:
        worker.stop()
    submit = bench.wrk(
        f"/queue/{APP}", method="POST", body=json.dumps(BODY), headers={**auth, "Content-Type": "application/json"}
    )
    hello_after = bench.wrk(HELLO_PATH, url=hello_url, headers={})
    baseline = (hello_before.requests_per_s + hello_after.requests_per_s) / 2
    print(f"\n[1] wrk -t1 -c{bench.connections} -d{bench.duration_s:.0f}s, one API process (loopback)")
    print(header_row())
    print(row("hello-world FastAPI app (before)", hello_before, baseline))
    print(row("hello-world FastAPI app (after)", hello_after, baseline))
    print(row("GET .../requests/{id}/status", status, baseline))
    print(row("  the same, polls access-logged", status_logged, baseline))
    print(row("GET /health (an idle worker alive)", health, baseline))
    print(row("POST /queue/fal-ai/bitdance", submit, baseline))
    print("  goals: status >= 0.50x hello-world, health >= 0.50x, submit >= 1000 req/s")


def measure_pollers(bench: Bench, model: Path, pollers: int, interval_ms: int) -> None:
    """Status latency with ``pollers`` clients polling every ``interval_ms`` while a worker generates."""
    bench.redis().flushall()
    worker = start_worker(bench.settings, model, log_path=bench.root / "worker.log")
    try:
        wait_until_ready(bench.url, min_workers=1, timeout_s=300, processes=(worker,))
        long_job = {**BODY, "num_inference_steps": 100, "image_size": {"width": 512, "height": 512}}
        ids = bench.submit(4, long_job)
        client = bench.redis()
        record = f"{bench.settings.key_prefix}:req:{{}}".format
        deadline = time.monotonic() + 120
        while "IN_PROGRESS" not in [client.hget(record(rid), "status") for rid in ids]:
            if time.monotonic() > deadline:
                log = (bench.root / "worker.log").read_text()[-2000:]
                raise RuntimeError(f"the worker did not start generating\n{log}")
            time.sleep(0.05)
        started = time.time()
        paths = [status_path(rid) for rid in ids]
        result = bench.wrk("", connections=pollers, headers=dict(AUTH), paths=paths, delay_ms=interval_ms)
        statuses = [client.hget(record(rid), "status") for rid in ids]
        done = [float(client.hget(record(rid), "completed_at") or 0) for rid in ids]
        generating = "IN_PROGRESS" in statuses or any(t > started + bench.duration_s * 0.9 for t in done)
    finally:
        worker.stop()
    print(f"\n[2] {pollers} pollers, each polling a status every {interval_ms} ms, while a worker generates")
    print(header_row())
    print(row("GET .../status (4 requests, polled)", result, None))
    print(f"  worker generating throughout: {'yes' if generating else 'NO'}; goal: p99 <= 50 ms")


async def hold_streams(bench: Bench, ids: list[str], idle_s: float, changes: int, api_pids: list[int]) -> None:
    host, port = bench.settings.host, bench.settings.port
    streams = [StatusStream(rid) for rid in ids]
    opened = time.perf_counter()
    readers = []
    for start in range(0, len(streams), 100):  # in waves, as clients arrive
        batch = streams[start : start + 100]
        paths = [f"/queue/{APP}/requests/{s.request_id}/status/stream?logs=1" for s in batch]
        pairs = zip(paths, batch, strict=True)
        readers += await asyncio.gather(*(open_stream(host, port, path, KEY, s) for path, s in pairs))
    while not all(s.events for s in streams):  # every stream got its first event
        await asyncio.sleep(0.05)
    print(f"  {len(streams)} streams open and answered in {time.perf_counter() - opened:.1f}s")
    await asyncio.sleep(1.0)
    cpu_before, wall_before = cpu_seconds(api_pids), time.perf_counter()
    await asyncio.sleep(idle_s)
    busy = (cpu_seconds(api_pids) - cpu_before) / (time.perf_counter() - wall_before)
    print(f"  API CPU while nothing changes: {100 * busy:.1f}% of a core over {idle_s:.0f}s (goal < 5%)")

    from core.protocol import LogEntry
    from core.requests.worker_store import WorkerRequestStore

    store = WorkerRequestStore(redis.Redis.from_url(bench.redis_server.url), bench.settings)
    latencies = []
    for index in range(changes):  # a worker's progress log entry on one request
        stream = streams[(index * 37) % len(streams)]
        seen = len(stream.events)
        stream.changed.clear()
        changed_at = time.perf_counter()
        store.append_log(stream.request_id, LogEntry.now(f"bench change {index}"))
        while len(stream.events) == seen and stream.closed_at is None:
            await asyncio.wait_for(stream.changed.wait(), timeout=10)
            stream.changed.clear()
        latencies.append(1000 * (stream.events[-1][0] - changed_at))
        await asyncio.sleep(0.02)
    latencies.sort()
    print(
        f"  a change reaches its stream (worker log entry, {len(latencies)} changes): "
        f"p50 {statistics.median(latencies):.1f} ms, max {latencies[-1]:.1f} ms (goal <= 100 ms)"
    )
    cancel_latencies = []
    async with httpx.AsyncClient(base_url=bench.url, headers=AUTH, timeout=120) as client:
        # A cancel: COMPLETED reaches the stream, which then closes. The queue moved, so every queued
        # stream re-reads its position too: each cancel's latency includes that burst.
        for index in range(min(changes, 5)):
            stream = streams[-1 - index]
            changed_at = time.perf_counter()
            response = await client.put(f"/queue/{APP}/requests/{stream.request_id}/cancel")
            response.raise_for_status()
            while stream.closed_at is None:
                await asyncio.wait_for(stream.changed.wait(), timeout=120)
                stream.changed.clear()
            final = stream.events[-1]
            if final[1].get("status") != "COMPLETED":
                raise RuntimeError("a cancelled request's stream closed without COMPLETED")
            cancel_latencies.append(1000 * (final[0] - changed_at))
            await asyncio.sleep(1.0)  # let the queue-move burst settle
    print(
        f"  a cancel reaches its stream as COMPLETED ({len(cancel_latencies)} cancels, HTTP call included): "
        f"p50 {statistics.median(cancel_latencies):.1f} ms, max {max(cancel_latencies):.1f} ms"
    )
    for reader in readers:
        reader.cancel()


def measure_streams(bench: Bench, api: ManagedProcess, count: int, idle_s: float, changes: int) -> None:
    bench.redis().flushall()
    print(f"\n[3] {count} open status streams (?logs=1) on queued requests, no worker")
    ids = bench.submit(count)
    asyncio.run(hold_streams(bench, ids, idle_s, changes, process_tree(api.pid)))


def measure_scaling(bench: Bench, rid: str) -> None:
    results = {}
    for workers in (1, 2):
        with api_process(bench, f"api-{workers}", api_workers=workers) as (url, _):
            results[workers] = bench.wrk(status_path(rid), url=url, connections=64, headers=dict(AUTH))
    print(f"\n[4] status with 1 and 2 API processes on one port (wrk -t1 -c64 -d{bench.duration_s:.0f}s)")
    print(header_row())
    print(row("1 process", results[1], results[1].requests_per_s))
    print(row("2 processes (--workers 2)", results[2], results[1].requests_per_s))


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
    with httpx.Client(base_url=url, headers=AUTH, timeout=600) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            client.post(f"/{APP}", json=BODY).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_overhead(bench: Bench, model: Path, repeats: int) -> None:
    bench.redis().flushall()
    worker = start_worker(bench.settings, model, log_path=bench.root / "worker-overhead.log")
    try:
        wait_until_ready(bench.url, min_workers=1, timeout_s=300, processes=(worker,))
        run_seconds(bench.url, 1)  # warm-up: safety checker and first-call costs
        queued = run_seconds(bench.url, repeats)
    finally:
        worker.stop()
    direct = direct_seconds(model, repeats)
    print(f"\n[5] 512x512, 10 steps: direct pipe.generate {direct:.3f}s, sync run through the queue "
          f"{queued:.3f}s, added {queued - direct:+.3f}s ({repeats} runs, median)")  # fmt: skip


def raise_open_files_limit(wanted: int) -> None:
    """Streams need sockets on both ends: lift the soft limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections for the rate runs")
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-interval-ms", type=int, default=100, help="fal's Python client polls every 100 ms")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=16.0, help="seconds the streams sit idle (keep-alive: 15)")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="generations per latency measurement")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny 16x one)")
    parser.add_argument("--steps", default="1,2,3,4,5", help="which of the steps above to run (comma-separated)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (logs) instead of a temp dir")
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_hello:
        serve_hello(args.serve_hello)
        return 0
    raise_open_files_limit(2 * args.streams + 1024)
    with contextlib.ExitStack() as scope:
        root = args.keep or Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="bitdance-bench-")))
        root.mkdir(parents=True, exist_ok=True)
        redis_server = RedisProcess(root / "redis", log_path=root / "redis.log").start()
        settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
            _env_file=None, port=free_port(), redis_url=redis_server.url, storage_dir=root / "storage",
            api_keys=[KEY], torch_threads=1,
            max_queue_length=None,  # the submit bench fills the queue far past the default bound on purpose
        )  # fmt: skip
        bench = Bench(root, redis_server, settings, args.duration, args.connections)
        api = start_api(settings, log_path=root / "api.log")
        hello_port = free_port()
        hello = start_hello(hello_port, root / "hello.log")
        try:
            wait_until_ready(bench.url, processes=(api,))
            hello_url = f"http://127.0.0.1:{hello_port}"
            wait_for(hello_url + HELLO_PATH, hello)
            model = args.model or ensure_tiny_checkpoint(root / "tiny-16x", 16)
            steps = {int(step) for step in args.steps.split(",")}
            if 1 in steps:
                measure_rates(bench, hello_url, model)
            if 2 in steps:
                measure_pollers(bench, model, args.pollers, args.poll_interval_ms)
            if 3 in steps:
                measure_streams(bench, api, args.streams, args.idle, args.changes)
            if 4 in steps:
                bench.redis().flushall()
                measure_scaling(bench, bench.submit(1)[0])
            if 5 in steps:
                measure_overhead(bench, model, args.repeats)
        finally:
            for process in (hello, api):
                process.stop()
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
