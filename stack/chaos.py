"""``python -m stack.chaos`` (``make chaos``): crash parts of a running stack and count what survives.

Starts the stack as ``make run`` does (``python -m stack``: Redis, the API and one worker, supervised)
on the tiny 16x checkpoint with short leases and small requests (512x512, 10 steps, CPU), then:

- **kill-worker**: ``kill -9`` the worker mid-generation N times (the launcher restarts it; the
  recovery sweep requeues the request it was running);
- **restart-redis**: ``kill -9`` Redis with requests queued and running and a sync run waiting
  (the launcher restarts it on its append-only file);
- **restart-api**: SIGTERM the API with sync runs and status streams open (it drains, the launcher
  restarts it; a run answered at the end of the drain is fetched from the queue by its request id);
- **abuse** (``stack.abuse``): 100 MB headers, slowloris, pipelining without reading, and every
  connection slot held by a request in flight, against the API's HTTP limits.

Each scenario prints submitted / completed OK / completed with error / lost (``stuck``: not COMPLETED
by the deadline, counted as lost); each abuse scenario prints sent / refused as designed / served /
5xx / lost and the API's RSS and ``/health/live`` latency during it. Exit status 1 if any request is
lost or stuck, a status stream broke instead of ending cleanly, or an abuse scenario lost a
connection, drew an unexpected 5xx or made ``/health/live`` fail where it should answer. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis

from core.requests.records import Keys
from server.http_limits import raise_open_files_limit
from stack.abuse import AbuseScale, print_abuse_table, run_abuse
from stack.launcher import ensure_tiny_checkpoint, free_port, python_argv

APP = "fal-ai/bitdance"
BODY = {"prompt": "chaos", "image_size": "square", "num_inference_steps": 10}
# Short leases and sweeps so that a killed worker's request is requeued within seconds; a short drain.
CHAOS_ENVIRONMENT = {
    "BITDANCE_LEASE_TTL_S": "3",
    "BITDANCE_SWEEP_INTERVAL_S": "1",
    "BITDANCE_PROGRESS_INTERVAL_S": "0",
    "BITDANCE_SHUTDOWN_GRACE_S": "3",
    "BITDANCE_TORCH_THREADS": "1",
    "BITDANCE_MAX_REQUEUES": "1",
    # The abuse scenarios fill every connection slot and wait out the header timeout: small ones.
    "BITDANCE_MAX_CONNECTIONS": "512",
    "BITDANCE_HEADER_TIMEOUT_S": "3",
    # The key-flood scenario: one key may have this many waiting, the rest of its submits get 429.
    "BITDANCE_MAX_QUEUED_PER_KEY": "20",
}


@dataclass
class Tally:
    """What happened to the requests of one scenario."""

    scenario: str
    submitted: int = 0
    ok: int = 0
    error: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    refused: int = 0  # 503 before acceptance: nothing was enqueued (a client resends it)
    streams: int = 0
    streams_broken: int = 0

    @property
    def is_clean(self) -> bool:
        return not self.lost and not self.stuck and not self.streams_broken


def children_of(pid: int) -> dict[int, list[str]]:
    """{pid: argv} of the direct children of ``pid`` (read from /proc)."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                found[int(entry.name)] = [a.decode(errors="replace") for a in argv if a]
    return found


def kind_of(argv: list[str]) -> str:
    if argv and Path(argv[0].split()[0]).name == "redis-server":  # it retitles itself "redis-server host:port"
        return "redis"
    if "-m" in argv:
        return {"worker": "worker", "server": "api"}.get(argv[argv.index("-m") + 1], "other")
    return "other"


@dataclass
class LaunchedStack:
    """``python -m stack`` in a subprocess (its own data directory and port)."""

    data_dir: Path
    model: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> LaunchedStack:
        argv = python_argv(
            "stack", "--port", str(self.port), "--data-dir", str(self.data_dir), "--model", str(self.model)
        )
        log = open(self.data_dir / "stack.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CHAOS_ENVIRONMENT}
        )
        log.close()
        self.wait_healthy(timeout_s)
        return self

    def pid_of(self, kind: str) -> int | None:
        assert self.process is not None
        for pid, argv in children_of(self.process.pid).items():
            if kind_of(argv) == kind:
                return pid
        return None

    def signal(self, kind: str, sig: int) -> int | None:
        pid = self.pid_of(kind)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pid

    def workers_listed(self) -> int | None:
        """Workers registered in Redis (alive or not): killed ones must expire."""
        assert self.process is not None
        for argv in children_of(self.process.pid).values():
            if kind_of(argv) == "redis":
                port = int(argv[0].split(":")[-1]) if ":" in argv[0] else int(argv[argv.index("--port") + 1])
                with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
                    return int(client.zcard(Keys("bitdance").workers))
        return None

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        """Until /health says Redis is up and a worker alive (the launcher restarts what died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the launcher exited ({self.process.returncode}); see {self.data_dir / 'stack.log'}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = httpx.get(f"{self.url}/health", timeout=2).json()
                if body.get("redis") and body.get("workers", 0) >= 1:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"stack not healthy after {timeout_s:.0f}s")

    def wait_restarted(self, kind: str, old_pid: int | None, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.pid_of(kind)
            if pid is not None and pid != old_pid:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the launcher did not restart the {kind}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Client:
    """The queue API as a patient client sees it: transport errors and 5xx while a part restarts are retried."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": "Key chaos"}, timeout=30)

    def submit(self, seed: int) -> str | None:
        """The request id, or None when the API refused it (503: nothing enqueued)."""
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                response = self.http.post(f"/queue/{APP}", json={**BODY, "seed": seed})
                if response.status_code == 200:
                    return str(response.json()["request_id"])
                if response.status_code != 503:
                    raise RuntimeError(f"submit answered {response.status_code}: {response.text}")
            time.sleep(0.5)
        return None

    def status(self, rid: str, logs: bool = False) -> dict[str, Any] | None:
        """The status body; ``{"status": "LOST"}`` for 404; None while the API or Redis is away."""
        try:
            response = self.http.get(f"/queue/{APP}/requests/{rid}/status", params={"logs": int(logs)})
        except httpx.TransportError:
            return None
        if response.status_code == 404:
            return {"status": "LOST"}
        return dict(response.json()) if response.status_code in (200, 202) else None

    def wait_generating(self, rid: str, timeout_s: float) -> bool:
        """Until the request is IN_PROGRESS with a decoding step logged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.status(rid, logs=True) or {}
            logs = body.get("logs") or []
            if body.get("status") == "IN_PROGRESS" and any(e["message"].startswith("Step ") for e in logs):
                return True
            if body.get("status") in ("COMPLETED", "LOST"):
                return False
            time.sleep(0.1)
        return False

    def settle(self, tally: Tally, rids: list[str], timeout_s: float) -> None:
        """Wait for every request to complete and count the outcomes."""
        tally.submitted += len(rids)
        pending = set(rids)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for rid in sorted(pending):
                body = self.status(rid)
                if body is None or body["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                    continue
                pending.discard(rid)
                if body["status"] == "LOST":
                    tally.lost.append(rid)
                elif body.get("error"):
                    tally.error += 1
                else:
                    tally.ok += 1
            time.sleep(0.5)
        tally.stuck.extend(sorted(pending))


class Background:
    """Calls run on threads, their results (or exceptions) kept in order."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[Any] = []

    def start(self, call: Callable[[], Any]) -> None:
        index = len(self.results)
        self.results.append(None)

        def target() -> None:
            try:
                self.results[index] = call()
            except Exception as exc:  # kept: a transport error is an outcome here
                self.results[index] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        return self.results


def sync_run(url: str, seed: int) -> httpx.Response:
    with httpx.Client(base_url=url, headers={"Authorization": "Key chaos"}, timeout=600) as http:
        return http.post(f"/{APP}", json={**BODY, "seed": seed})


def read_stream(url: str, rid: str, opened: threading.Event) -> tuple[str, bool]:
    """(last status seen, whether the stream ended cleanly); ``opened`` is set at its first event."""
    last = ""
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Key chaos"}, timeout=600) as http:
            path = f"/queue/{APP}/requests/{rid}/status/stream"
            with http.stream("GET", path, headers={"accept": "text/event-stream"}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        last = json.loads(line[6:])["status"]
                        opened.set()
    except httpx.HTTPError:
        return last, False
    return last, True


def run_ids(tally: Tally, responses: list[Any]) -> list[str]:
    """Sync runs: completed ones are counted; the request ids of the others are returned to settle.

    A run answered without a request id (a broken connection, a bare 500) is lost to its client; one
    whose connection was refused never reached the server (clients resend those)."""
    follow = []
    for response in responses:
        if isinstance(response, httpx.ConnectError):
            tally.refused += 1
        elif not isinstance(response, httpx.Response) or "x-fal-request-id" not in response.headers:
            tally.submitted += 1
            tally.lost.append(f"sync run: {response!r}")
        elif response.status_code == 200:
            tally.submitted += 1
            tally.ok += 1
        elif response.status_code == 503 and response.json().get("error_type") == "runner_scheduling_failure":
            tally.refused += 1
        else:
            follow.append(response.headers["x-fal-request-id"])
    return follow


def kill_worker(stack: LaunchedStack, client: Client, kills: int, settle_s: float) -> Tally:
    tally, rids = Tally(f"kill -9 worker x{kills}"), []
    for i in range(kills):
        rid = client.submit(seed=i)
        if rid is None:
            tally.refused += 1
            continue
        rids.append(rid)
        if client.wait_generating(rid, timeout_s=settle_s):
            old = stack.signal("worker", signal.SIGKILL)
            stack.wait_restarted("worker", old)
    client.settle(tally, rids, settle_s)
    return tally


def restart_redis(stack: LaunchedStack, client: Client, rounds: int, per_round: int, settle_s: float) -> Tally:
    tally, rids, runs = Tally(f"restart redis x{rounds}"), [], Background()
    for r in range(rounds):
        queued = [rid for rid in (client.submit(seed=1000 + r * per_round + i) for i in range(per_round)) if rid]
        rids += queued
        runs.start(partial(sync_run, stack.url, 2000 + r))
        if queued:
            client.wait_generating(queued[0], timeout_s=settle_s)  # one running, the others queued
        old = stack.signal("redis", signal.SIGKILL)
        stack.wait_restarted("redis", old)
        stack.wait_healthy()
    rids += run_ids(tally, runs.join(settle_s))
    client.settle(tally, rids, settle_s)
    return tally


def restart_api(stack: LaunchedStack, client: Client, rounds: int, per_round: int, settle_s: float) -> Tally:
    tally, rids, runs, streams = Tally(f"restart api x{rounds}"), [], Background(), Background()
    opened: list[threading.Event] = []
    for r in range(rounds):
        for i in range(per_round):
            runs.start(partial(sync_run, stack.url, 3000 + r * per_round + i))
            rid = client.submit(seed=4000 + r * per_round + i)
            if rid:
                rids.append(rid)
                opened.append(threading.Event())
                streams.start(partial(read_stream, stack.url, rid, opened[-1]))
        for event in opened:  # streams open (and the runs, sent before them, accepted by now)
            event.wait(timeout=60)
        time.sleep(1.0)
        old = stack.signal("api", signal.SIGTERM)
        stack.wait_restarted("api", old)
        stack.wait_healthy()
    rids += run_ids(tally, runs.join(settle_s))
    for outcome in streams.join(settle_s):
        tally.streams += 1
        if not (isinstance(outcome, tuple) and outcome[1]):
            tally.streams_broken += 1
    client.settle(tally, rids, settle_s)
    return tally


def print_table(tallies: list[Tally]) -> None:
    header = f"{'scenario':<24}{'submitted':>10}{'completed OK':>14}{'completed with error':>22}{'lost':>6}"
    print(header)
    print("-" * len(header))
    for t in tallies:
        print(f"{t.scenario:<24}{t.submitted:>10}{t.ok:>14}{t.error:>22}{len(t.lost) + len(t.stuck):>6}")
    for t in tallies:
        for rid in t.lost:
            print(f"  {t.scenario}: lost {rid}")
        for rid in t.stuck:
            print(f"  {t.scenario}: stuck (not COMPLETED) {rid}")
        if t.refused:
            print(f"  {t.scenario}: {t.refused} refused with 503 before being accepted (safe to resend)")
        if t.streams:
            print(f"  {t.scenario}: {t.streams} status streams, {t.streams - t.streams_broken} ended cleanly")
    sys.stdout.flush()


@contextlib.contextmanager
def launched(model: Path | None, data_dir: Path | None) -> Iterator[LaunchedStack]:
    with tempfile.TemporaryDirectory(prefix="bitdance-chaos-") as tmp:
        root = (data_dir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        checkpoint = model or ensure_tiny_checkpoint(root / "weights" / "tiny-16x", 16)
        stack = LaunchedStack(root, checkpoint.resolve(), free_port())
        try:
            yield stack.start()
        finally:
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="worker kills (make chaos N=...)")
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--api-restarts", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=2, help="requests submitted per Redis/API restart")
    parser.add_argument("--settle-s", type=float, default=900.0, help="how long requests may take to complete")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny 16x one)")
    parser.add_argument("--data-dir", type=Path, help="keep the stack's data and logs here")
    parser.add_argument(
        "--abuse", choices=["full", "short", "none"], default="full", help="size of the abuse scenarios (stack.abuse)"
    )
    args = parser.parse_args(argv)
    raise_open_files_limit()  # the abuse scenarios hold thousands of sockets
    tallies: list[Tally] = []
    abuse_tallies = []
    with launched(args.model, args.data_dir) as stack:
        client = Client(stack.url)
        print(f"stack up at {stack.url} (logs: {stack.data_dir / 'stack.log'})", flush=True)
        print("(a) kill -9 the worker mid-generation ...", flush=True)
        tallies.append(kill_worker(stack, client, args.kills, args.settle_s))
        print("(b) kill -9 Redis with requests queued and running ...", flush=True)
        tallies.append(restart_redis(stack, client, args.redis_restarts, args.per_round, args.settle_s))
        print("(c) SIGTERM the API with sync runs and status streams open ...", flush=True)
        tallies.append(restart_api(stack, client, args.api_restarts, args.per_round, args.settle_s))
        if args.abuse != "none":
            print(
                "(d) abuse the API (headers, slowloris, pipelining, connection flood, one key flooding the queue) ...",
                flush=True,
            )
            scale = AbuseScale() if args.abuse == "full" else AbuseScale.short()
            stack.wait_healthy()
            abuse_tallies = run_abuse(
                stack.url,
                lambda: stack.pid_of("api"),
                scale,
                int(CHAOS_ENVIRONMENT["BITDANCE_MAX_CONNECTIONS"]),
                float(CHAOS_ENVIRONMENT["BITDANCE_HEADER_TIMEOUT_S"]),
            )
        listed = wait_for_dead_workers_to_expire(stack)
    print_table(tallies)
    if abuse_tallies:
        print()
        print_abuse_table(abuse_tallies)
    print(f"workers listed in Redis at the end (after {args.kills} kills): {listed} (1 alive)")
    clean = all(t.is_clean for t in tallies) and all(t.is_clean for t in abuse_tallies)
    return 0 if clean and listed == 1 else 1


def wait_for_dead_workers_to_expire(stack: LaunchedStack) -> int | None:
    """Killed workers never unregister: they must drop out of Redis 3 leases after their last beat."""
    lease_s = float(CHAOS_ENVIRONMENT["BITDANCE_LEASE_TTL_S"])
    deadline = time.monotonic() + 3 * lease_s + 10
    listed = stack.workers_listed()
    while (listed is None or listed > 1) and time.monotonic() < deadline:
        time.sleep(0.5)
        listed = stack.workers_listed()
    return listed


if __name__ == "__main__":
    sys.exit(main())
