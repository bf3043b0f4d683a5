"""Logging setup shared by the ``__main__`` of the API, the workers and the stack (text or JSON)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

MAX_TRACEBACK_CHARS = 16_384  # of one logged traceback: its start and its end (where the error is) are kept


def bounded_traceback(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """``text`` when short enough, else its first quarter and last three quarters of ``limit``: a deep
    recursion's traceback (hundreds of KB) stays one bounded log entry."""
    if len(text) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    return f"{text[:head]}\n  ... {len(text) - limit} characters of traceback elided ...\n{text[-tail:]}"


class TextFormatter(logging.Formatter):
    """The text log line, with tracebacks bounded."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's naming
        return bounded_traceback(super().formatException(ei))


class JsonFormatter(TextFormatter):
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
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
