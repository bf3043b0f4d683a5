"""The API process must stay light: no module of the API package imports torch, the model, the
workers or the tooling."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import server

FORBIDDEN = ("torch", "model", "worker", "stack")


def api_modules() -> list[str]:
    """Every module of the ``server`` package, subpackages included."""
    return sorted(info.name for info in pkgutil.walk_packages(server.__path__, prefix="server."))


def test_the_walk_finds_the_api_package_and_its_queue_state() -> None:
    modules = api_modules()
    assert {"server.app", "server.__main__", "server.routes.queue", "server.queue.api_store"} <= set(modules)


def test_no_api_module_imports_torch_the_model_the_workers_or_the_tooling() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {api_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
