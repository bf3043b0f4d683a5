"""Paths and tool lookups shared by the deployment checks (everything offline: no cluster, no daemon)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"


UNPACKED_TOOLS = {"nginx": ROOT / ".run" / "nginx" / "usr" / "sbin" / "nginx"}  # where `make nginx` puts it


def tool(name: str) -> str:
    """A command-line tool from the project's environment (pip-installed), PATH, or unpacked by make
    (``UNPACKED_TOOLS``); skip if absent."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    unpacked = UNPACKED_TOOLS.get(name)
    if found is None and unpacked is not None and unpacked.exists():
        found = str(unpacked)
    if found is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return found
