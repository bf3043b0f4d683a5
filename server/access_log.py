"""uvicorn's access log as the API writes it: every line but answered status polls (unless
``BITDANCE_LOG_STATUS_POLLS`` asks for them too). API-only, so it lives here and not in
``core.logconfig``, which every process shares.
"""

from __future__ import annotations

import logging
import re

from core.logconfig import configure_logging

ACCESS_LOGGER = "uvicorn.access"
# uvicorn's access line: (client, method, path with query, HTTP version, status code)
STATUS_POLL_PATH = re.compile(r"/requests/[^/?]+/status(?:\?|$)")


class AnsweredStatusPolls(logging.Filter):
    """Drops uvicorn's access lines of answered status polls (``GET .../requests/{id}/status``, below 400)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        method, path, status_code = args[1], args[2], args[4]
        is_poll = method == "GET" and isinstance(path, str) and STATUS_POLL_PATH.search(path) is not None
        return not (is_poll and isinstance(status_code, int) and status_code < 400)


def configure_api_logging(level: str, fmt: str, log_status_polls: bool) -> None:
    """``configure_logging``, and uvicorn's access log without answered status polls unless asked for."""
    configure_logging(level, fmt)
    access = logging.getLogger(ACCESS_LOGGER)
    access.filters[:] = [f for f in access.filters if not isinstance(f, AnsweredStatusPolls)]
    if not log_status_polls:
        access.addFilter(AnsweredStatusPolls())
