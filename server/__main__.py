"""``python -m server``: load Settings, configure logging, serve the API with uvicorn (TLS optional).

SIGTERM or Ctrl-C drains (``server.shutdown``): no new connections, in-flight sync runs and status
streams get ``BITDANCE_SHUTDOWN_GRACE_S`` to finish. A second Ctrl-C exits at once.

``--workers N`` (``BITDANCE_API_WORKERS``) runs N API processes on the one port (uvicorn's workers: the
parent binds the socket, each child builds the app from the parent's ``Settings`` and drains on its own);
they share nothing but Redis and the storage directory, like replicas behind a proxy.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

from core.settings import Settings, is_loopback_host
from server.access_log import configure_api_logging
from server.bounded_protocol import bounded_http_protocol
from server.http_limits import HttpLimits, raise_open_files_limit
from server.serving import serve_app, serve_processes
from server.shutdown import ANSWER_MARGIN_S

logger = logging.getLogger("server")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user gave (not None) win over the environment."""
    names = ("host", "port", "api_workers", "redis_url", "storage_dir", "tls_cert_file", "tls_key_file", "log_level")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


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
    settings = Settings(**cli_overrides(args))
    configure_api_logging(settings.log_level, settings.log_format, settings.log_status_polls)
    host = settings.host
    if settings.is_open:
        if not is_loopback_host(host):
            logger.warning("no API keys configured: refusing to listen on %s, using 127.0.0.1", host)
            host = "127.0.0.1"
        logger.warning("no API keys configured (BITDANCE_API_KEYS): open server, listening on %s only", host)
    raise_open_files_limit()  # before the limits are computed: the connection bound fits the descriptors
    options = uvicorn_options(settings, host)
    if settings.api_workers > 1:
        serve_processes(settings, options)
    else:
        serve_app(settings, options)
    return 0


def uvicorn_options(settings: Settings, host: str) -> dict[str, Any]:
    """How uvicorn serves the API (also used by the benchmark's hello-world app, for a fair comparison):
    its HTTP protocol is uvicorn's httptools one within the limits of ``server.http_limits``."""
    return {
        "http": bounded_http_protocol(HttpLimits.from_settings(settings)),
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
