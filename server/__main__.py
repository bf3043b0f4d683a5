"""``python -m server``: load Settings, configure logging, serve the API with uvicorn (TLS optional).

SIGTERM or Ctrl-C drains (``server.shutdown``): no new connections, in-flight sync runs and status
streams get ``BITDANCE_SHUTDOWN_GRACE_S`` to finish. A second Ctrl-C exits at once.

``--workers N`` (``BITDANCE_API_WORKERS``) runs N API processes on the one port (uvicorn's workers: the
parent binds the socket, each child builds the app from the same settings and drains on its own);
they share nothing but Redis and the storage directory, like replicas behind a proxy.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from server.app import create_app, drain_of_environment_app
from server.logconfig import configure_logging
from server.settings import Settings
from server.shutdown import ANSWER_MARGIN_S, Drain

logger = logging.getLogger("server")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user gave (not None) win over the environment."""
    names = ("host", "port", "api_workers", "redis_url", "storage_dir", "tls_cert_file", "tls_key_file", "log_level")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def export_to_workers(overrides: dict[str, Any]) -> None:
    """Command-line overrides as BITDANCE_* variables, so that worker processes build the same Settings."""
    for name, value in overrides.items():
        os.environ[f"BITDANCE_{name.upper()}"] = str(value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain | None = None) -> None:
        super().__init__(config)
        self.drain = drain  # None in ``--workers N``: each worker process's app has its own

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self.drain or drain_of_environment_app()
        if drain is not None:
            if not drain.is_draining:
                logger.info("shutting down: draining for up to %.0fs", drain.grace_s)
            drain.begin()
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", dest="api_workers", type=int, help="API processes on the one port (default 1)")
    parser.add_argument("--redis-url")
    parser.add_argument("--storage-dir")
    parser.add_argument("--tls-cert-file")
    parser.add_argument("--tls-key-file")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    overrides = cli_overrides(args)
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    host = settings.host
    if settings.is_open:
        if not is_loopback(host):
            logger.warning("no API keys configured: refusing to listen on %s, using 127.0.0.1", host)
            host = "127.0.0.1"
        logger.warning("no API keys configured (BITDANCE_API_KEYS): open server, listening on %s only", host)
    options = uvicorn_options(settings, host)
    if settings.api_workers > 1:
        export_to_workers(overrides)
        config = uvicorn.Config(
            "server.app:app_from_environment", factory=True, workers=settings.api_workers, **options
        )
        serve_processes(config, settings.api_workers)
    else:
        app = create_app(settings)
        DrainingServer(uvicorn.Config(app, **options), app.state.drain).run()
    return 0


def serve_worker(config: uvicorn.Config, sock: socket.socket) -> None:
    """One of ``--workers N``: its own app (``app_from_environment``) on the shared socket, draining on SIGTERM."""
    DrainingServer(config).run(sockets=[sock])


def serve_processes(config: uvicorn.Config, workers: int) -> None:
    """uvicorn's multi-process mode, with our ``DrainingServer`` in every process: the parent binds the
    socket, starts the workers, passes SIGTERM/SIGINT on and waits for them."""
    sock = config.bind_socket()
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=serve_worker, args=(config, sock), name=f"api-{i}") for i in range(workers)]
    for process in processes:
        process.start()

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    for process in processes:
        process.join()
    sock.close()


def uvicorn_options(settings: Settings, host: str) -> dict[str, Any]:
    """How uvicorn serves the API (also used by the benchmark's hello-world app, for a fair comparison)."""
    return {
        "host": host,
        "port": settings.port,
        "ssl_certfile": str(settings.tls_cert_file) if settings.tls_cert_file else None,
        "ssl_keyfile": str(settings.tls_key_file) if settings.tls_key_file else None,
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_s + ANSWER_MARGIN_S),
        "log_config": None,
    }


if __name__ == "__main__":
    sys.exit(main())
