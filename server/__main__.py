"""``python -m server``: load Settings, configure logging, serve the API with uvicorn (TLS optional).

SIGTERM or Ctrl-C drains (``server.shutdown``): no new connections, in-flight sync runs and status
streams get ``BITDANCE_SHUTDOWN_GRACE_S`` to finish. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import sys
from types import FrameType
from typing import Any

import uvicorn

from server.app import create_app
from server.logconfig import configure_logging
from server.settings import Settings
from server.shutdown import ANSWER_MARGIN_S, Drain

logger = logging.getLogger("server")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user gave (not None) win over the environment."""
    names = ("host", "port", "redis_url", "storage_dir", "tls_cert_file", "tls_key_file", "log_level")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.drain.is_draining:
            logger.info("shutting down: draining for up to %.0fs", self.drain.grace_s)
        self.drain.begin()
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--redis-url")
    parser.add_argument("--storage-dir")
    parser.add_argument("--tls-cert-file")
    parser.add_argument("--tls-key-file")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    settings = Settings(**cli_overrides(args))
    configure_logging(settings.log_level, settings.log_format)
    host = settings.host
    if settings.is_open:
        if not is_loopback(host):
            logger.warning("no API keys configured: refusing to listen on %s, using 127.0.0.1", host)
            host = "127.0.0.1"
        logger.warning("no API keys configured (BITDANCE_API_KEYS): open server, listening on %s only", host)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s + ANSWER_MARGIN_S),
        log_config=None,
    )
    DrainingServer(config, app.state.drain).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
