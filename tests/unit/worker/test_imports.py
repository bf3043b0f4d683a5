"""A worker imports the queue state, the model and the shared modules, never the HTTP side."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import server.queue
import worker

# The HTTP side of the server package and the web framework under it.
HTTP_SIDE = (
    "fastapi",
    "starlette",
    "uvicorn",
    "server.__main__",
    "server.app",
    "server.routes",
    "server.middleware",
    "server.auth",
    "server.deps",
    "server.urls",
    "server.error_handlers",
    "server.metrics",
)


def worker_side_modules() -> list[str]:
    """Every module of the worker package and of the queue state package, and the pipeline."""
    names = [info.name for info in pkgutil.walk_packages(worker.__path__, prefix="worker.")]
    names += [info.name for info in pkgutil.walk_packages(server.queue.__path__, prefix="server.queue.")]
    return sorted([*names, "model.pipeline"])


def test_the_walk_finds_the_worker_and_the_queue_state() -> None:
    modules = worker_side_modules()
    assert {"worker.__main__", "worker.tasks", "server.queue.worker_store", "server.queue.webhook_outbox"} <= set(
        modules
    )


def test_worker_side_imports_nothing_from_the_http_side() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {worker_side_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        f"side = {HTTP_SIDE!r}\n"
        "bad = sorted(m for m in sys.modules if any(m == s or m.startswith(s + '.') for s in side))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
