"""Paths and tool lookups shared by the deployment checks (everything offline: no cluster, no daemon)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"


def tool(name: str) -> str:
    """A command-line tool from the project's environment (pip-installed) or PATH; skip if absent."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return found
