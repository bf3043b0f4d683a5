"""Logging setup shared by the ``__main__`` of the API, the workers and the stack (text or JSON)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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
