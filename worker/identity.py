"""A worker's name in Redis: the one given, or ``{host}-{device}-{6 hex digits}`` by default."""

from __future__ import annotations

import re
import socket
import uuid


def default_worker_name(device: str, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}-{device}-{uuid.uuid4().hex[:6]}"


def is_default_name_of_host(name: str, host: str) -> bool:
    """True when ``name`` is a default name given on ``host`` (not merely one starting with it)."""
    return re.fullmatch(rf"{re.escape(host)}-[a-z]+(:\d+)?-[0-9a-f]{{6}}", name) is not None
