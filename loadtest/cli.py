"""``python -m loadtest``: options, one run (local, Locust master or Locust worker) or a sweep, the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import inputs, report, server_metrics
from loadtest.config import LoadConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load-test a fal-compatible endpoint (this server or fal's hosted one) with Locust.",
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", default="http://127.0.0.1:8000", help="base URL (https://fal.run for fal's)")
    target.add_argument("--queue-url", help="queue base URL (default: URL/queue, or https://queue.fal.run)")
    target.add_argument("--endpoint", default="fal-ai/bitdance")
    target.add_argument("--key", help="API key (default: $FAL_KEY)")
    target.add_argument("--ca-file", help="CA bundle for HTTPS (default: $SSL_CERT_FILE, else the system's)")
    flow = p.add_argument_group("request flow")
    flow.add_argument("--flow", choices=["queue", "run"], default="queue", help="queue API or the sync run route")
    flow.add_argument("--status", choices=["poll", "stream"], default="poll", help="status polling or the stream")
    flow.add_argument("--client", choices=["http", "fal-client"], default="http", help="HTTP, or the real fal-client")
    flow.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls (fal-client's 0.1)")
    flow.add_argument("--logs", action="store_true", help="ask for logs with each status")
    flow.add_argument("--no-download", action="store_true", help="do not download the images")
    flow.add_argument("--inputs", type=Path, help="JSONL file of inputs (default: a built-in mix)")
    flow.add_argument("--timeout", type=float, default=600.0, help="a request not completed by then is lost")
    shape = p.add_argument_group("load shape (one of --concurrency / --rate; --requests and/or --duration)")
    shape.add_argument("--concurrency", type=int, help="closed loop: users sending one request at a time")
    shape.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    shape.add_argument("--requests", type=int, help="stop after this many requests")
    shape.add_argument("--duration", type=float, help="stop starting requests after this many seconds")
    shape.add_argument("--spawn-rate", type=float, help="users started per second (default: all within 1 s)")
    shape.add_argument("--start-jitter", type=float, default=0.0, metavar="S",
                       help="closed loop: each user waits a random 0 to S seconds before its first request, so "
                       "that users started together do not send their requests in lockstep")  # fmt: skip
    shape.add_argument("--sweep", help="comma-separated rates: one open-loop run each, then a chart")
    out = p.add_argument_group("report")
    out.add_argument("--slo-s", type=float, help="goodput: requests ok within this many seconds end to end")
    out.add_argument("--json", type=Path, help="write the report as JSON")
    out.add_argument("--csv", help="write PREFIX_phases.csv and PREFIX_requests.csv")
    out.add_argument("--chart", type=Path, default=Path("loadtest-sweep.png"), help="--sweep's PNG chart")
    out.add_argument("--no-server-metrics", action="store_true", help="do not compare with the server's /metrics")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    dist = p.add_argument_group("distributed (Locust's master/worker mode)")
    dist.add_argument("--master", action="store_true", help="run as Locust master; workers generate the load")
    dist.add_argument("--expect-workers", type=int, default=1, help="master: workers to wait for")
    dist.add_argument("--master-bind-host", default="*")
    dist.add_argument("--master-bind-port", type=int, default=5557)
    dist.add_argument("--worker", action="store_true", help="run as Locust worker of --master-host")
    dist.add_argument("--master-host", default="127.0.0.1")
    dist.add_argument("--master-port", type=int, default=5557)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        url=args.url,
        queue_url=args.queue_url,
        endpoint=args.endpoint,
        key=args.key,
        flow=args.flow,
        status=args.status,
        client=args.client,
        poll_interval_s=args.poll_interval,
        concurrency=args.concurrency,
        start_jitter_s=args.start_jitter,
        rate=args.rate,
        requests=args.requests,
        duration_s=args.duration,
        timeout_s=args.timeout,
        download=not args.no_download,
        with_logs=args.logs,
        slo_s=args.slo_s,
        ca_file=args.ca_file,
        inputs=inputs.load_jsonl(args.inputs) if args.inputs else inputs.builtin_mix(),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loadtest import runner  # Locust (and its gevent patching, done by __main__) only past the options

    if args.worker:
        runner.run_worker(args.master_host, args.master_port)
        return 0
    config = build_config(args)
    if args.sweep:
        from loadtest import sweep

        return sweep.run_sweep(argv if argv is not None else sys.argv[1:], args, config)
    try:
        config.check()
        runner.configure_fal_client_hosts(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compare = not args.no_server_metrics and not config.is_fal_hosted
    verify: Any = config.ca_file or True
    before = server_metrics.scrape(config.url, config.auth_headers, verify) if compare else None
    if args.master:
        result = runner.run_master(config, args.expect_workers, args.master_bind_host, args.master_bind_port,
                                   args.spawn_rate)  # fmt: skip
    else:
        result = runner.run_local(config, args.spawn_rate, show_progress=not args.quiet)
    server = None
    if before is not None:
        time.sleep(0.5)  # the worker records its inference seconds right after completing
        server = server_metrics.delta(before, server_metrics.scrape(config.url, config.auth_headers, verify))
    data = report.build_report(result.samples, config=config.public_dict(), wall_s=result.wall_s,
                               slo_s=config.slo_s, server=server)  # fmt: skip
    data["locust"] = result.locust_stats
    print(report.render_text(data))
    if args.json:
        report.write_json(data, args.json)
    if args.csv:
        report.write_csv(data, result.samples, args.csv)
    return 0


def load_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
