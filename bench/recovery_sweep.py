"""``python -m bench.recovery_sweep`` (part of ``make bench-api``): the recovery sweep's time against queue length.

For each queue length it fills a private redis-server (append-only file on, as deployed) with queued
requests written exactly as submit writes them (``add_request``, 1000 per MULTI), adds requests to
recover (running ones whose worker died, taken-and-abandoned ones, overdue ones), then times one
``worker.recovery.sweep`` that recovers them and one idle sweep after it. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from core.requests.api_store import add_request, create_request
from core.requests.records import Keys, NewRequest
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from stack.launcher import RedisProcess
from worker import recovery

FILL_BATCH = 1000
TO_RECOVER = 5  # of each kind


def new_request(settings: Settings, start_timeout_s: float | None = None) -> NewRequest:
    return NewRequest(
        str(uuid.uuid4()), "bench", settings.endpoint_id, {"prompt": "p"}, "normal", "http://f", start_timeout_s
    )


def fill(conn: redis.Redis, settings: Settings, count: int) -> None:
    """``count`` queued requests (fsync relaxed while filling; back to every write before measuring)."""
    conn.config_set("appendfsync", "no")
    try:
        for start in range(0, count, FILL_BATCH):
            with conn.pipeline(transaction=True) as pipe:
                pipe.multi()
                for _ in range(min(FILL_BATCH, count - start)):
                    add_request(pipe, conn, settings, new_request(settings))
                pipe.execute()
    finally:
        conn.config_set("appendfsync", "always")


def add_requests_to_recover(conn: redis.Redis, jobs: WorkerRequestStore, settings: Settings) -> None:
    """Running requests of a dead worker, requests taken off the queue and never started, overdue ones."""
    queue = Keys.rq_queue(settings.queue_normal)
    for _ in range(TO_RECOVER):
        create_request(conn, settings, new_request(settings, start_timeout_s=0.001))
    for kind in ("orphan", "taken"):
        for _ in range(TO_RECOVER):
            new = new_request(settings)
            create_request(conn, settings, new)
            conn.lrem(queue, 1, new.request_id)
            conn.lpush(queue, new.request_id)  # to the front, where a worker takes it
            taken = jobs.dequeue([queue])
            if kind == "orphan" and taken is not None:
                jobs.start(taken[1], "dead-worker")
    time.sleep(max(settings.lease_ttl_s, 0.01) * 2)  # leases and the dequeue grace period run out


def timed_sweep(jobs: WorkerRequestStore) -> tuple[float, int]:
    started = time.perf_counter()
    changed = recovery.sweep(jobs)
    return time.perf_counter() - started, len(changed)


def measure(redis_url: str, queued: int, idle_repeats: int) -> str:
    settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
        _env_file=None, redis_url=redis_url, key_prefix=f"bench{uuid.uuid4().hex[:6]}", lease_ttl_s=0.05
    )
    conn = redis.Redis.from_url(redis_url)
    jobs = WorkerRequestStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    started = time.perf_counter()
    fill(conn, settings, queued)
    fill_s = time.perf_counter() - started
    add_requests_to_recover(conn, jobs, settings)
    recovering_s, changed = timed_sweep(jobs)
    idle_s = statistics.median(timed_sweep(jobs)[0] for _ in range(idle_repeats))
    depth = conn.llen(Keys.rq_queue(settings.queue_normal))
    return (
        f"{queued:>7} queued: sweep recovering {changed} requests {recovering_s * 1000:7.1f} ms, "
        f"idle sweep {idle_s * 1000:6.2f} ms (median of {idle_repeats}; queue length {depth}; "
        f"filled in {fill_s:.0f}s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, nargs="+", default=[1000, 100_000], help="queue lengths")
    parser.add_argument("--repeats", type=int, default=5, help="idle sweeps per length")
    args = parser.parse_args(argv)
    logging.getLogger("worker.recovery").setLevel(logging.ERROR)  # one warning per recovered request
    with tempfile.TemporaryDirectory(prefix="bitdance-bench-sweep-") as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis", log_path=Path(tmp) / "redis.log").start()
        try:
            print("recovery sweep (worker.recovery.sweep) against queue length, loopback redis-server:")
            for queued in args.queued:
                print("  " + measure(redis_server.url, queued, args.repeats), flush=True)
        finally:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
