"""Who may import whom, derived from the packages themselves (every module each one holds):

- ``core`` (shared by the API and the workers) imports neither FastAPI nor torch, nor any package above it;
- ``server`` (HTTP only) imports no torch, model, worker or tooling;
- ``worker`` imports nothing of the HTTP side (``server``, FastAPI, Starlette, uvicorn).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

HTTP_SIDE = ("server", "fastapi", "starlette", "uvicorn")
TOOLING = ("stack", "loadtest", "bench")


def modules_of(package: str) -> list[str]:
    """Every module of ``package``, subpackages included, found by walking it (not a hand-kept list)."""
    root = __import__(package)
    return sorted([package, *(info.name for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."))])


def imported_top_levels(modules: list[str]) -> list[str]:
    """The modules in ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def offending(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in forbidden)


def test_the_walk_finds_each_package() -> None:
    assert {"core.settings", "core.requests.api_store", "core.webhooks.outbox"} <= set(modules_of("core"))
    assert {"server.app", "server.__main__", "server.routes.queue"} <= set(modules_of("server"))
    assert {"worker.__main__", "worker.tasks"} <= set(modules_of("worker"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("core", ("torch", "model", "worker", *HTTP_SIDE, *TOOLING)),
        ("server", ("torch", "model", "worker", *TOOLING)),
        ("worker", (*HTTP_SIDE, *TOOLING)),
    ],
)
def test_package_imports_nothing_across_its_boundary(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(imported_top_levels(modules_of(package)), forbidden) == []


def test_the_check_sees_what_a_module_imports() -> None:
    assert "fastapi" in offending(imported_top_levels(["server.app"]), ("fastapi",))
