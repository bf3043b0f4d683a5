"""``python -m bench.queue_positions`` (part of ``make bench-api``): a status read's cost against queue length.

For each queue length it fills a private redis-server (append-only file on, as deployed) with queued
requests written exactly as submit writes them (``bench.recovery_sweep.fill``: ``add_request``, no
workers), plus one low-priority request behind them, then times sequential reads from the API's
store on loopback:

- ``status``: ``RequestStore.status_view`` of the last queued normal request and of the low one (the
  worst case of a list scan), client-side p50/p99 and Redis's own time per call (``INFO commandstats``);
- ``queue move``: ``RequestStore.queue_heads``, what the status streams' shared snapshot reads once
  per queue move;
- for reference, what these reads were before tickets (issue 19 item 7): ``LPOS`` of that request and
  ``LRANGE`` of both lists.

Then (``--streams``, default 20) with the API running: that many status streams open on requests at
the back of the queue, and a worker taking requests off its head one at a time (DEQUEUE then START,
which says the queue moved): how long each move takes to reach each stream as its new position.
That part uses only what main had too (HTTP, ``WorkerRequestStore.dequeue``/``start``), so it can be
run against an older checkout (``--streams-only``) for the comparison.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from bench.http_load import StatusStream, open_stream
from bench.recovery_sweep import fill, new_request
from core.redis_options import async_redis_options
from core.requests.api_store import RequestStore, create_request
from core.requests.records import Keys, NewRequest
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from stack.launcher import RedisProcess, base_url, free_port, start_api, wait_until_ready

KEY = "bench-key"
APP = "fal-ai/bitdance"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms"


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def redis_usec_per_call(conn: redis.Redis, command: str) -> float:
    stats = conn.info("commandstats").get(f"cmdstat_{command}", {})
    return float(stats.get("usec_per_call", 0.0))


async def measure(redis_url: str, queued: int, repeats: int) -> list[str]:
    settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
        _env_file=None, redis_url=redis_url, key_prefix=f"bench{uuid.uuid4().hex[:6]}"
    )
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    started = time.perf_counter()
    fill(conn, settings, queued)
    low = new_request(settings)
    create_request(conn, settings, NewRequest(low.request_id, "bench", settings.endpoint_id, {"prompt": "p"}, "low",
                                              "http://f", None))  # fmt: skip
    fill_s = time.perf_counter() - started
    normal_list, low_list = Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)
    last = str(conn.lindex(normal_list, -1))
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, **async_redis_options(redis_url))
    store = RequestStore(client, settings)
    lines = [f"{queued:>7} queued (filled in {fill_s:.0f}s):"]
    try:
        for name, rid in (("last normal", last), ("low", low.request_id)):
            view = await store.status_view(rid)
            conn.config_resetstat()
            samples = await timed(lambda rid=rid: store.status_view(rid), repeats)  # type: ignore[misc]
            redis_us = redis_usec_per_call(conn, "evalsha")
            lines.append(
                f"    status of the {name} request (position {view.queue_position}): {percentiles(samples)}"
                f"  (in Redis {redis_us:.1f} us/call)"
            )
        conn.config_resetstat()
        samples = await timed(store.queue_heads, repeats)
        lines.append(
            f"    queue move (shared snapshot, queue_heads):   {percentiles(samples)}"
            f"  (in Redis {redis_usec_per_call(conn, 'evalsha'):.1f} us/call)"
        )
        conn.config_resetstat()
        samples = await timed(lambda: client.lpos(normal_list, last), repeats)
        lines.append(
            f"    before, per status read: LPOS of the last:  {percentiles(samples)}"
            f"  (in Redis {redis_usec_per_call(conn, 'lpos'):.1f} us/call)"
        )

        async def both_lists() -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.lrange(normal_list, 0, -1)
                pipe.lrange(low_list, 0, -1)
                await pipe.execute()

        conn.config_resetstat()
        samples = await timed(both_lists, max(5, repeats // 100) if queued > 10_000 else repeats)
        lines.append(
            f"    before, per queue move: LRANGE both lists:  {percentiles(samples)}"
            f"  (in Redis {redis_usec_per_call(conn, 'lrange'):.1f} us/call)"
        )
    finally:
        await client.aclose()
        conn.close()
    return lines


async def measure_streams(redis_url: str, root: Path, queued: int, count: int, moves: int) -> str:
    settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
        _env_file=None, redis_url=redis_url, key_prefix=f"bench{uuid.uuid4().hex[:6]}", port=free_port(),
        storage_dir=root / "storage", api_keys=[KEY], torch_threads=1,
    )  # fmt: skip
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    fill(conn, settings, queued)
    api = start_api(settings, log_path=root / f"api-{queued}.log")
    readers: list[asyncio.Task[None]] = []
    try:
        url = base_url(settings)
        wait_until_ready(url, processes=(api,))
        auth = {"Authorization": f"Key {KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as client:
            body = {"prompt": "a red fox", "num_inference_steps": 10}
            rids = [(await client.post(f"/queue/{APP}", json=body)).json()["request_id"] for _ in range(count)]
        streams = [StatusStream(rid) for rid in rids]
        for stream in streams:
            path = f"/queue/{APP}/requests/{stream.request_id}/status/stream"
            readers.append(await open_stream(settings.host, settings.port, path, KEY, stream))
        while not all(s.events for s in streams):
            await asyncio.sleep(0.01)
        worker = WorkerRequestStore(conn, settings)
        lists = [Keys.rq_queue(settings.queue_normal), Keys.rq_queue(settings.queue_low)]
        delays: list[float] = []
        for _ in range(moves):
            seen = [len(s.events) for s in streams]
            moved_at = time.perf_counter()
            taken = worker.dequeue(lists)
            assert taken is not None
            worker.start(taken[1], "bench-worker")  # publishes the queue move
            deadline = moved_at + 10
            while (
                any(len(s.events) == n for s, n in zip(streams, seen, strict=True)) and time.perf_counter() < deadline
            ):
                await asyncio.sleep(0.001)
            delays += [s.events[n][0] - moved_at for s, n in zip(streams, seen, strict=True) if len(s.events) > n]
            await asyncio.sleep(0.02)
        last = streams[-1].events[-1][1].get("queue_position")
        return (
            f"{queued:>7} queued, {count} streams, {moves} moves ({len(delays)} of {count * moves} events; last "
            f"position {last}): a move reaches a stream {percentiles(delays)}"
        )
    finally:
        for reader in readers:
            reader.cancel()
        api.stop()
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_positions", description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, nargs="+", default=[1000, 100_000], help="queue lengths")
    parser.add_argument("--repeats", type=int, default=2000, help="reads of each kind per length")
    parser.add_argument("--streams", type=int, default=20, help="status streams open (0: none)")
    parser.add_argument("--moves", type=int, default=50, help="queue moves timed per length")
    parser.add_argument("--streams-only", action="store_true", help="only the streams (runs on older code too)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bitdance-bench-positions-") as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis", log_path=Path(tmp) / "redis.log").start()
        try:
            if not args.streams_only:
                print("status reads against queue length (loopback redis-server, sequential, no workers):")
                for queued in args.queued:
                    for line in asyncio.run(measure(redis_server.url, queued, args.repeats)):
                        print(line, flush=True)
            if args.streams:
                print("status streams while a worker takes requests off the queue's head (loopback API):")
                for queued in args.queued:
                    line = asyncio.run(measure_streams(redis_server.url, Path(tmp), queued, args.streams, args.moves))
                    print("  " + line, flush=True)
        finally:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
