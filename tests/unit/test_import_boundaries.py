"""Who may import whom, derived from the packages themselves (every module each one holds):

- ``core`` (shared by the API and the workers) imports neither FastAPI nor torch, nor any package above it;
- ``server`` (HTTP only) imports no torch, model, worker or tooling;
- ``worker`` imports nothing of the HTTP side (``server``, FastAPI, Starlette, uvicorn);
- ``model``, the library, imports nothing of ``core``, ``server``, ``worker`` or the tooling; its
  command-line modules (:data:`MODEL_CLIS`, the named exceptions) may read ``core``'s settings and
  schemas, and nothing else of the project; what a worker imports without torch (the pipeline
  interface, the checkpoint layout, the simulated model) imports no torch;
- nothing of ``core``, ``server``, ``worker`` or ``model`` imports the benchmarks (``bench``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

HTTP_SIDE = ("server", "fastapi", "starlette", "uvicorn")
TOOLING = ("stack", "loadtest", "bench")
# The model's command-line modules: the only ones of ``model`` that may read the project's settings.
MODEL_CLIS = ("model.generate", "model.verify", "model.plan", "model.tiny")
# What the simulated worker and the worker's queue code import from the model, without torch.
TORCH_FREE_MODEL = ("model.interface", "model.checkpoint.layout", "model.simulated")


def modules_of(package: str) -> list[str]:
    """Every module of ``package``, subpackages included, found by walking it (not a hand-kept list)."""
    root = importlib.import_module(package)
    if not hasattr(root, "__path__"):  # a plain module
        return [package]
    return sorted([package, *(info.name for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."))])


def model_library() -> list[str]:
    return [name for name in modules_of("model") if name not in MODEL_CLIS]


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
    assert {"model.pipeline", "model.checkpoint.loading", "model.simulated.simulated_pipeline"} <= set(model_library())
    assert set(MODEL_CLIS) <= set(modules_of("model")) and not set(MODEL_CLIS) & set(model_library())


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


def test_the_model_library_imports_nothing_of_the_project() -> None:
    forbidden = ("core", "worker", *HTTP_SIDE, *TOOLING)
    assert offending(imported_top_levels(model_library()), forbidden) == []


def test_the_model_command_lines_import_only_core_of_the_project() -> None:
    assert offending(imported_top_levels(list(MODEL_CLIS)), ("worker", *HTTP_SIDE, *TOOLING)) == []


def test_what_a_worker_imports_without_torch_imports_no_torch() -> None:
    modules = [name for package in TORCH_FREE_MODEL for name in modules_of(package)]
    assert offending(imported_top_levels(modules), ("torch",)) == []


@pytest.mark.parametrize("package", ["core", "server", "worker", "model"])
def test_nothing_imports_the_benchmarks(package: str) -> None:
    assert offending(imported_top_levels(modules_of(package)), ("bench",)) == []


def test_the_check_sees_what_a_module_imports() -> None:
    assert "fastapi" in offending(imported_top_levels(["server.app"]), ("fastapi",))
