"""Locust's runners driven headless: local (one process), master (collects) and worker (generates load).

Distributed mode is Locust's own: a master (``--master --expect-workers N``) sends the test to
its workers (``--worker --master-host H``) with Locust's spawn message, which carries this kit's
options; each worker reports its samples to the master with Locust's periodic worker report.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import argument_parser, events
from locust.env import Environment

from loadtest.config import LoadConfig
from loadtest.samples import Sample
from loadtest.state import LoadState, current_state, set_state
from loadtest.users import ClosedLoopUser, EndpointUser, OpenLoopUser

logger = logging.getLogger("loadtest")

CONFIG_OPTION = "bitdance_loadtest_config"  # the kit's options inside Locust's parsed_options
REPORT_SAMPLES = "bitdance_loadtest_samples"
REPORT_IDLE = "bitdance_loadtest_idle"
REPORT_IN_FLIGHT = "bitdance_loadtest_in_flight"
DRAIN_GRACE_S = 30.0  # after the deadline, how long requests in flight may take beyond their own timeout


@dataclass
class RunResult:
    samples: list[Sample]
    wall_s: float
    locust_stats: dict[str, Any] = field(default_factory=dict)


def configure_fal_client_hosts(config: LoadConfig) -> None:
    """Point ``fal_client`` at the target before it is imported (it reads its hosts once)."""
    if config.client != "fal-client" or config.is_fal_hosted:
        return
    parts = urlsplit(config.url)
    if parts.scheme != "https":
        raise ValueError("fal-client speaks HTTPS only: serve TLS (make run TLS=1) and pass an https:// --url")
    host = parts.netloc + parts.path
    os.environ["FAL_RUN_HOST"] = host
    os.environ["FAL_QUEUE_RUN_HOST"] = urlsplit(config.queue_base).netloc + urlsplit(config.queue_base).path
    if config.key:
        os.environ.setdefault("FAL_KEY", config.key)
    if config.ca_file:  # httpx (under fal_client) reads it when each client is made
        os.environ["SSL_CERT_FILE"] = config.ca_file


def user_class(config: LoadConfig) -> type[EndpointUser]:
    cls = OpenLoopUser if config.rate is not None else ClosedLoopUser
    cls.host = config.url
    return cls


def locust_options(config: LoadConfig, expect_workers: int = 0) -> Any:
    """Locust's default options plus the kit's own (forwarded to workers by Locust's spawn message)."""
    parser = argument_parser.get_empty_argument_parser()
    argument_parser.setup_parser_arguments(parser)
    options = parser.parse_args(["--headless"])
    options.expect_workers = expect_workers
    setattr(options, CONFIG_OPTION, config.to_dict())
    return options


def users_for(config: LoadConfig, workers: int = 1) -> int:
    return config.concurrency if config.concurrency is not None else max(workers, 1)


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every 10 s otherwise)."""

    def __init__(self, total: int | None, duration_s: float | None, stream: Any = sys.stderr) -> None:
        self.total = total
        self.duration_s = duration_s
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_line = 0.0

    def show(self, done: int, errors: int, in_flight: int, final: bool = False) -> None:
        now = time.monotonic()
        if not (self.tty or final or now - self.last_line >= 10.0):
            return
        self.last_line = now
        elapsed = now - self.started
        if self.total:
            fraction = min(done / self.total, 1.0)
        elif self.duration_s:
            fraction = min(elapsed / self.duration_s, 1.0)
        else:
            fraction = 0.0
        bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
        total = f"/{self.total}" if self.total else ""
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"[{bar}] {done}{total} done, {in_flight} in flight, {errors} errors, {rate:.1f} req/s, {elapsed:.0f} s"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + text + end)
        self.stream.flush()


def _wait(done: Callable[[], bool], progress: Callable[[], None], hard_deadline: float) -> None:
    while not done() and time.monotonic() < hard_deadline:
        progress()
        gevent.sleep(0.5)


def hard_deadline(config: LoadConfig) -> float:
    """Give up on the run after this (monotonic): a bound even if a request hangs."""
    span = config.duration_s if config.duration_s is not None else 24 * 3600.0
    return time.monotonic() + span + config.timeout_s + DRAIN_GRACE_S


def run_local(config: LoadConfig, spawn_rate: float | None = None, show_progress: bool = True) -> RunResult:
    state = LoadState(config, config.requests, arrival_users=1)
    set_state(state)
    env = Environment(user_classes=[user_class(config)], events=events, host=config.url,
                      parsed_options=locust_options(config))  # fmt: skip
    runner = env.create_local_runner()
    users = users_for(config)
    progress = Progress(config.requests, config.duration_s) if show_progress else None
    started = time.monotonic()
    state.begin()
    runner.start(users, spawn_rate=spawn_rate or max(users, 1))

    def tick(final: bool = False) -> None:
        if progress is not None:
            errors = sum(1 for s in state.samples if s.error)
            progress.show(len(state.samples), errors, state.in_flight, final)

    _wait(lambda: state.idle, tick, hard_deadline(config))
    wall = time.monotonic() - started
    tick(final=True)
    stats = _locust_stats(env)
    runner.quit()
    return RunResult(list(state.samples), wall, stats)


def run_master(
    config: LoadConfig,
    expect_workers: int,
    bind_host: str = "*",
    bind_port: int = 5557,
    spawn_rate: float | None = None,
) -> RunResult:
    """Wait for the workers, start the test on them, collect their samples until all are idle."""
    env = Environment(user_classes=[user_class(config)], events=events, host=config.url,
                      parsed_options=locust_options(config, expect_workers))  # fmt: skip
    runner = env.create_master_runner(master_bind_host=bind_host, master_bind_port=bind_port)
    samples: list[Sample] = []
    idle: dict[str, bool] = {}
    in_flight: dict[str, int] = {}

    def on_report(client_id: str, data: dict[str, Any]) -> None:
        samples.extend(Sample.from_dict(s) for s in data.get(REPORT_SAMPLES, []))
        if REPORT_IDLE in data:
            idle[client_id] = bool(data[REPORT_IDLE])
            in_flight[client_id] = int(data.get(REPORT_IN_FLIGHT, 0))

    events.worker_report.add_listener(on_report)
    logger.info("waiting for %d Locust worker(s) on port %d", expect_workers, bind_port)
    while runner.worker_count < expect_workers:
        gevent.sleep(0.2)
    users = users_for(config, expect_workers)
    progress = Progress(config.requests, config.duration_s)
    started = time.monotonic()
    runner.start(users, spawn_rate=spawn_rate or max(users, 1))

    def all_idle() -> bool:
        return len(idle) >= expect_workers and all(idle.values())

    def tick(final: bool = False) -> None:
        progress.show(len(samples), sum(1 for s in samples if s.error), sum(in_flight.values()), final)

    gevent.sleep(1.0)
    idle.clear()  # only reports sent after the start count
    _wait(all_idle, tick, hard_deadline(config))
    gevent.sleep(4.0)  # one more report interval: the last samples travel with the final report
    wall = time.monotonic() - started
    tick(final=True)
    stats = _locust_stats(env)
    runner.quit()
    events.worker_report.remove_listener(on_report)
    return RunResult(samples, wall, stats)


def run_worker(master_host: str, master_port: int = 5557) -> None:
    """Generate load for a master; the test's options arrive with the master's spawn message."""
    env = Environment(user_classes=[ClosedLoopUser, OpenLoopUser], events=events)
    runner = env.create_worker_runner(master_host, master_port)

    def on_test_start(environment: Environment, **kwargs: Any) -> None:
        config = LoadConfig.from_dict(getattr(environment.parsed_options, CONFIG_OPTION))
        configure_fal_client_hosts(config)
        workers = max(int(getattr(environment.parsed_options, "expect_workers", 1) or 1), 1)
        index = getattr(runner, "worker_index", 0)
        budget = None
        if config.requests is not None:  # this worker's share of the request count
            budget = config.requests // workers + (1 if index < config.requests % workers else 0)
        set_state(LoadState(config, budget, arrival_users=users_for(config, workers)))
        user_class(config)  # sets the target host on the class the master asks for

    def on_report(client_id: str, data: dict[str, Any]) -> None:
        try:
            state = current_state()
        except RuntimeError:
            return
        data[REPORT_SAMPLES] = [s.to_dict() for s in state.drain_unsent()]
        data[REPORT_IDLE] = state.started_at is not None and state.idle
        data[REPORT_IN_FLIGHT] = state.in_flight

    events.test_start.add_listener(on_test_start)
    events.report_to_master.add_listener(on_report)
    runner.greenlet.join()


def _locust_stats(env: Environment) -> dict[str, Any]:
    """Locust's own per-request-name statistics (every HTTP call), for the JSON report."""
    out = {}
    for (name, method), entry in env.stats.entries.items():
        out[f"{method} {name}"] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "median_ms": entry.median_response_time,
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": entry.max_response_time,
        }
    return out
