"""``python -m stack``: private redis-server + N workers + the API, kept running until Ctrl-C.

A child that dies (a worker killed or crashed, Redis, the API) is restarted with exponential backoff and
a log line; the others keep serving. Ctrl-C or SIGTERM stops them all.

The process pieces (``RedisProcess``, ``start_worker``, ``start_api``, ``wait_until_ready``,
``ensure_tiny_checkpoint``) are reused by the test fixtures and ``bench.api_capacity``, so tests start
the stack exactly as ``make run`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import redis

from core.settings import Settings, child_environment, is_simulated_model
from model.checkpoint.layout import TINY_MARKER  # torch-free
from stack.tls import TlsFiles, ensure_tls_files

DEFAULT_TINY_PARALLEL = 64
STOP_TIMEOUT_S = 20.0
RESTART_BACKOFF_S = 1.0  # first restart delay; doubled for each crash in a row, up to the maximum
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long has its backoff reset


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process with a name and a graceful stop (SIGTERM, then SIGKILL)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        if self.is_running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would (no cleanup in the child)."""
        if self.is_running():
            self.popen.kill()
            self.popen.wait()


def _spawn(name: str, argv: list[str], env: dict[str, str] | None, log_path: Path | None) -> ManagedProcess:
    log_file = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by ManagedProcess
    popen = subprocess.Popen(
        argv, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None, start_new_session=True
    )
    return ManagedProcess(name, popen, log_file)


@dataclass
class RedisProcess:
    """A private redis-server: own port and data dir, append-only file fsynced on every write."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    binary: str = "redis-server"
    log_path: Path | None = None
    maxmemory: str = "1gb"  # with noeviction: a full Redis refuses writes (submits answer 503), it is not killed
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.process = _spawn("redis", self.argv(), None, self.log_path)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    client.close()
                    return self
            if not self.process.is_running():
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.log_path})")

    def start_process(self) -> ManagedProcess:
        """``start`` (on the same port and data directory), for the launcher's supervisor."""
        self.start()
        if self.process is None:
            raise RuntimeError("redis-server did not start")
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self) -> RedisProcess:
        """Stop (or after ``kill``) and start again on the same port and data directory."""
        self.stop()
        return self.start()


@dataclass
class Supervised:
    """A child the launcher keeps running, and how to start it again."""

    name: str
    start: Callable[[], ManagedProcess]
    process: ManagedProcess
    started_at: float = field(default_factory=time.monotonic)
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Restarts dead children with exponential backoff, and says so through ``report``."""

    def __init__(
        self,
        report: Callable[[str], None],
        backoff_s: float = RESTART_BACKOFF_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self.report = report
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.children: list[Supervised] = []

    def add(self, name: str, start: Callable[[], ManagedProcess], process: ManagedProcess) -> None:
        self.children.append(Supervised(name, start, process))

    def check(self) -> None:
        """One pass: schedule the restart of each child that died, restart those whose delay passed."""
        now = time.monotonic()
        for child in self.children:
            if child.process.is_running():
                if now - child.started_at >= self.stable_after_s:
                    child.crashes_in_a_row = 0
                continue
            if child.restart_at is None:
                delay = min(self.backoff_s * 2**child.crashes_in_a_row, self.backoff_max_s)
                child.crashes_in_a_row += 1
                child.restart_at = now + delay
                code = child.process.stop()  # reaped; closes its log file
                self.report(f"{child.name} exited with code {code}; restarting it in {delay:.0f}s")
            elif now >= child.restart_at:
                self.restart(child)

    def restart(self, child: Supervised) -> None:
        try:
            child.process = child.start()
        except (OSError, RuntimeError) as exc:  # e.g. redis-server not up in time: try again later
            delay = min(self.backoff_s * 2**child.crashes_in_a_row, self.backoff_max_s)
            child.crashes_in_a_row += 1
            child.restart_at = time.monotonic() + delay
            self.report(f"{child.name} could not be restarted ({exc}); next try in {delay:.0f}s")
            return
        child.started_at, child.restart_at = time.monotonic(), None
        child.restarts += 1
        self.report(f"{child.name} restarted (pid {child.process.pid}, restart #{child.restarts})")

    def processes(self) -> list[ManagedProcess]:
        return [child.process for child in self.children]


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_worker(
    settings: Settings,
    model_path: Path,
    device: str = "cpu",
    name: str | None = None,
    log_path: Path | None = None,
) -> ManagedProcess:
    """``python -m worker --device ... --model ...`` with the settings passed as BITDANCE_* variables."""
    argv = python_argv("worker", "--device", device, "--model", str(model_path))
    if name:
        argv += ["--name", name]
    return _spawn(f"worker {name or ''}".strip(), argv, child_environment(settings), log_path)


def start_api(settings: Settings, tls: TlsFiles | None = None, log_path: Path | None = None) -> ManagedProcess:
    """``python -m server`` (uvicorn) on ``settings.host:settings.port``, HTTPS when ``tls`` is given."""
    extra: dict[str, Any] = {}
    if tls is not None:
        extra = {"BITDANCE_TLS_CERT_FILE": str(tls.cert), "BITDANCE_TLS_KEY_FILE": str(tls.key)}
    return _spawn("api", python_argv("server"), child_environment(settings, **extra), log_path)


def base_url(settings: Settings, tls: TlsFiles | None = None) -> str:
    return f"{'https' if tls else 'http'}://{settings.host}:{settings.port}"


def wait_until_ready(
    url: str,
    *,
    min_workers: int = 0,
    timeout_s: float = 120.0,
    ca_file: Path | None = None,
    processes: tuple[ManagedProcess, ...] = (),
) -> dict[str, Any]:
    """Poll ``{url}/health`` until Redis is reachable and ``min_workers`` workers are alive."""
    deadline = time.monotonic() + timeout_s
    verify: Any = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    last: Any = None
    with httpx.Client(verify=verify, timeout=2.0) as client:
        while time.monotonic() < deadline:
            for process in processes:
                if not process.is_running():
                    raise RuntimeError(f"{process.name} exited with code {process.popen.returncode}")
            try:
                body = client.get(f"{url}/health").json()
                last = body
                if body.get("redis") and int(body.get("workers", 0)) >= min_workers:
                    return dict(body)
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s (last health: {last})")


def ensure_tiny_checkpoint(path: Path, parallel_num: int = DEFAULT_TINY_PARALLEL) -> Path:
    """Write the tiny random checkpoint with ``python -m model.tiny`` unless it is already there."""
    path = Path(path)
    if not (path / TINY_MARKER).is_file():  # written last: absent if an earlier write was cut short
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(python_argv("model.tiny", str(path), "--parallel-num", str(parallel_num)), check=True)
    return path


def worker_devices(device: str, workers: int | None = None) -> list[str]:
    """The device of each worker: one worker per GPU when several are asked for.

    ``cuda`` with several workers spreads them over ``cuda:0 .. cuda:N-1``; a comma-separated list
    (``cuda:0,cuda:2``) is used in turn; anything else (``cpu``, ``cuda:1``) is shared by all.
    ``workers`` defaults to one per listed device.
    """
    listed = [d.strip() for d in device.split(",") if d.strip()]
    if not listed:
        raise ValueError("no device given")
    workers = workers or len(listed)
    if listed == ["cuda"] and workers > 1:
        return [f"cuda:{i}" for i in range(workers)]
    return [listed[i % len(listed)] for i in range(workers)]


@dataclass
class Stack:
    """Redis + workers + API, started in that order and stopped in reverse; ``supervisor.check()``
    restarts any of them that died."""

    settings: Settings
    model_path: Path
    data_dir: Path
    workers: int = 1
    device: str = "cpu"
    tls: bool = False
    log_dir: Path | None = None
    redis_server: RedisProcess | None = None
    tls_files: TlsFiles | None = None
    health: dict[str, Any] = field(default_factory=dict)
    supervisor: Supervisor = field(default_factory=lambda: Supervisor(report=print_report))

    @property
    def processes(self) -> list[ManagedProcess]:
        """The running children: Redis, the workers, the API."""
        return self.supervisor.processes()

    @property
    def url(self) -> str:
        return base_url(self.settings, self.tls_files)

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def start(self, ready_timeout_s: float = 300.0) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis_server = redis_server = RedisProcess(
            self.data_dir / "redis", log_path=self._log("redis"), maxmemory=self.settings.redis_maxmemory
        )
        self.supervisor.add("redis-server", redis_server.start_process, redis_server.start_process())
        self.settings = self.settings.model_copy(
            update={"redis_url": self.redis_server.url, "storage_dir": (self.data_dir / "storage").resolve()}
        )
        if self.tls:
            self.tls_files = ensure_tls_files(self.data_dir / "tls")
        for index, device in enumerate(worker_devices(self.device, self.workers)):
            name = f"worker-{index}"
            start = partial(start_worker, self.settings, self.model_path, device, None, self._log(name))
            self.supervisor.add(name, start, start())
        start = partial(start_api, self.settings, self.tls_files, self._log("api"))
        self.supervisor.add("api", start, start())
        ca = self.tls_files.ca if self.tls_files else None
        self.health = wait_until_ready(
            self.url,
            min_workers=self.workers,
            timeout_s=ready_timeout_s,
            ca_file=ca,
            processes=tuple(self.processes),
        )
        return self

    def stop(self) -> None:
        """API first, then the workers, Redis last."""
        for process in reversed(self.processes):
            process.stop()
        self.supervisor.children.clear()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda (with --workers N: one worker per GPU) or a list: cuda:0,cuda:1"
    )
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the tiny one), or: simulated")
    parser.add_argument(
        "--slots", type=int, help="with --model simulated: requests each worker serves at once (N emulated GPUs)"
    )
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a locally generated CA")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per listed device)")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes serving the one port")
    parser.add_argument("--data-dir", type=Path, default=Path(".run"))
    return parser.parse_args(argv)


REAL_WEIGHTS_HINT = "load real weights with: make run MODEL=/path/to/BitDance-14B-64x DEVICE=cuda:0 (see weights.md)"


def model_line(health: dict[str, Any]) -> str:
    """One line on what the workers serve; says plainly when images will be noise or synthetic."""
    models = [w["model"] for w in health.get("live_workers", []) if isinstance(w.get("model"), dict)]
    if not models:
        return "Model: unknown (the workers did not report one)"
    model = models[0]
    name = str(model.get("name"))
    if model.get("variant") != name:
        name += f" ({model.get('variant')})"
    if model.get("simulated"):
        return f"Model: {name} is SIMULATED: images are synthetic, not BitDance output; {REAL_WEIGHTS_HINT}"
    if model.get("random"):
        return f"Model: {name} is the tiny RANDOM checkpoint: images will be noise; {REAL_WEIGHTS_HINT}"
    return f"Model: {name} from {model.get('path')}"


def print_report(line: str) -> None:
    """The launcher's own log lines (restarts), on stderr next to its children's output."""
    print(f"{time.strftime('%H:%M:%S')} [stack] {line}", file=sys.stderr, flush=True)


def print_banner(stack: Stack) -> None:
    url = stack.url
    keys = stack.settings.api_keys
    auth = f' -H "Authorization: Key {keys[0]}"' if keys else ' -H "Authorization: Key local"'
    if stack.tls_files is not None:
        print(f"SSL_CERT_FILE={stack.tls_files.ca}")
    print(f"BitDance (fal-ai/bitdance) is up at {url}  [queue API: {url}/queue]")
    print(f"  Playground: {url}/   API docs: {url}/docs")
    print(f"  {model_line(stack.health)}")
    cacert = f" --cacert {stack.tls_files.ca}" if stack.tls_files else ""
    print(
        f"  curl{cacert} -s {url}/fal-ai/bitdance{auth} -H 'Content-Type: application/json' "
        """-d '{"prompt": "a red fox in the snow", "num_inference_steps": 10}'"""
    )
    if not keys:
        print("  (no BITDANCE_API_KEYS set: open server on 127.0.0.1 only)")
    print("Press Ctrl-C to stop.", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    devices = worker_devices(args.device, args.workers)
    overrides = {"simulated_slots": args.slots} if args.slots else {}
    settings = Settings(host=args.host, port=args.port, device=devices[0], api_workers=args.api_workers, **overrides)
    if settings.is_open and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"no API keys configured: binding 127.0.0.1 instead of {args.host}", file=sys.stderr)
        settings = settings.model_copy(update={"host": "127.0.0.1"})
    model = args.model or ensure_tiny_checkpoint(data_dir / "weights" / "tiny-64x", DEFAULT_TINY_PARALLEL)
    model = model if is_simulated_model(model) else model.resolve()
    stack = Stack(settings, model, data_dir, workers=len(devices), device=args.device, tls=args.tls)
    stopping = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    # SIGINT explicitly too: a shell that starts the stack in the background makes it ignore SIGINT,
    # and then Python installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        print_banner(stack)
        while True:
            stack.supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
