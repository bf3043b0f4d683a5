"""``python -m bench.webhook_isolation`` (``make bench-webhooks``): how late honest webhooks arrive while
tarpit receivers hold their connections.

One process's dispatcher (``core.webhooks.dispatcher``, as the API and every worker run it) drains
the outbox of a private redis-server. First ``--tarpits`` requests complete with webhooks to tarpit
receivers (each on its own port, so the per-receiver cap does not help: only the concurrency and
the attempt deadline do) that drip one byte every 2 s and never finish their headers; then
``--honest`` requests complete, one every ``--interval-ms``, with webhooks to an honest receiver.
An honest webhook's delay is its arrival time minus the moment its request completed (both on
this host's clock). The same schedule runs once without tarpits, in the same process, for the
baseline. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.webhook_receivers import HonestReceiver, TarpitReceiver
from core.errors import RequestTimeoutError
from core.requests.api_store import create_request
from core.requests.records import NewRequest
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import build_outbox
from stack.launcher import RedisProcess

TARPIT_DRIP_S = 2.0


@dataclass(frozen=True)
class Delays:
    """Honest webhooks' delays in seconds (arrival minus completion), and how many never arrived."""

    seconds: list[float]
    missing: int
    tarpits_held: int = 0  # tarpit connections still open when the last honest webhook arrived

    def line(self) -> str:
        if not self.seconds:
            return f"none arrived ({self.missing} missing)"
        ordered = sorted(self.seconds)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return (
            f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms  ({len(ordered)} arrived, {self.missing} missing)"
        )


def complete_with_webhook(store: WorkerRequestStore, settings: Settings, url: str) -> tuple[str, float]:
    """A request submitted, started and completed (its webhook due now); its id and completion time."""
    rid = str(uuid.uuid4())
    new = NewRequest(rid, "bench", settings.endpoint_id, {"prompt": "p"}, "normal", "http://f", webhook=url)
    create_request(store.client, settings, new)
    store.start(rid, "bench-worker")
    completed_at = time.time()
    store.complete_error(rid, RequestTimeoutError().to_stored())
    return rid, completed_at


def run_schedule(redis_url: str, tarpits: int, honest: int, interval_s: float, wait_s: float) -> Delays:
    settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only _env_file
        _env_file=None, redis_url=redis_url, key_prefix=f"bench{uuid.uuid4().hex[:6]}", webhook_allow_private=True
    )
    store = WorkerRequestStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    receiver = HonestReceiver().start()
    traps = [TarpitReceiver(drip_s=TARPIT_DRIP_S).start() for _ in range(tarpits)]
    dispatcher = WebhookDispatcher(build_outbox(store.client, settings))
    dispatcher.start()
    try:
        for trap in traps:
            complete_with_webhook(store, settings, trap.url)
        completed: dict[str, float] = {}
        for _ in range(honest):
            rid, at = complete_with_webhook(store, settings, receiver.url)
            completed[rid] = at
            time.sleep(interval_s)
        deadline = time.monotonic() + wait_s
        while len(receiver.arrivals) < honest and time.monotonic() < deadline:
            time.sleep(0.05)
        held = sum(trap.open_connections for trap in traps)
        delays = [receiver.arrivals[rid] - at for rid, at in completed.items() if rid in receiver.arrivals]
        return Delays(delays, honest - len(delays), held)
    finally:
        dispatcher.stop()
        for trap in traps:
            trap.stop()
        receiver.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_isolation", description=__doc__.splitlines()[0])
    parser.add_argument("--tarpits", type=int, default=10, help="webhooks to tarpit receivers (one receiver each)")
    parser.add_argument("--honest", type=int, default=100, help="webhooks to the honest receiver")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="between two honest completions")
    parser.add_argument("--wait-s", type=float, default=60.0, help="longest wait for the honest webhooks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # one warning per tarpit attempt cut off
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    print(
        f"webhook delivery, one dispatcher: attempt deadline {defaults.webhook_timeout_s:g} s, "
        f"{defaults.webhook_concurrency} at once, {defaults.webhook_concurrency_per_host} per receiver; "
        f"{args.honest} honest webhooks, one completed every {args.interval_ms:g} ms"
    )
    with tempfile.TemporaryDirectory(prefix="bitdance-bench-webhooks-") as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis", log_path=Path(tmp) / "redis.log").start()
        try:
            interval_s = args.interval_ms / 1000
            baseline = run_schedule(redis_server.url, 0, args.honest, interval_s, args.wait_s)
            print(f"  no tarpit:                  honest delay {baseline.line()}", flush=True)
            hostile = run_schedule(redis_server.url, args.tarpits, args.honest, interval_s, args.wait_s)
            label = f"{args.tarpits} tarpits (1 byte / {TARPIT_DRIP_S:g} s):"
            print(f"  {label:<27} honest delay {hostile.line()}", flush=True)
            print(f"  (tarpit connections still held when the last honest webhook arrived: {hostile.tarpits_held})")
        finally:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
