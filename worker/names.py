"""A worker's name in Redis: the one given, or ``{host}-{device}-{6 hex digits}`` by default."""

from __future__ import annotations

import re
import socket
import uuid


def default_worker_name(device: str, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}-{device}-{uuid.uuid4().hex[:6]}"


def slot_name(worker_name: str, index: int) -> str:
    """The name of slot ``index`` of a multi-slot (simulated) worker: each slot heartbeats on its own."""
    return f"{worker_name}-slot{index}"


def is_name_or_slot_of(name: str, worker_name: str) -> bool:
    """True for ``worker_name`` itself and for the names of its slots."""
    return name == worker_name or re.fullmatch(rf"{re.escape(worker_name)}-slot\d+", name) is not None


def is_default_name_of_host(name: str, host: str) -> bool:
    """True when ``name`` is a default name given on ``host`` (not merely one starting with it), or one of its slots."""
    return re.fullmatch(rf"{re.escape(host)}-[a-z]+(:\d+)?-[0-9a-f]{{6}}(-slot\d+)?", name) is not None
