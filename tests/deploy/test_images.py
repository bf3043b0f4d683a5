"""docker/Dockerfile and the lock files: two targets, the API image without torch, pinned with hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import DOCKER, ROOT

LOCKS = ROOT / "requirements"


def stages() -> dict[str, str]:
    text = (DOCKER / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s\\;]+)", path.read_text(), flags=re.M)
    return {canonicalize_name(name.split("[")[0]): version for name, version in pins}


def project() -> dict[str, list[Requirement]]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "core": [Requirement(r) for r in meta["dependencies"]],
        "model": [Requirement(r) for r in meta["optional-dependencies"]["model"]],
    }


def test_two_targets_non_root_with_health_checks() -> None:
    found = stages()
    assert {"api", "worker"} <= set(found)
    for name in ("api", "worker"):
        body = found[name]
        assert re.search(r"^USER\s+(?!root\b)\w+", body, flags=re.M), f"{name} runs as root"
        assert "HEALTHCHECK" in body
    assert "requirements/api.txt" in found["api"] and "worker.txt" not in found["api"]
    assert "requirements/worker.txt" in found["worker"]
    assert "/health/live" in found["api"] and "worker.probe" in found["worker"]
    assert "FLASH_ATTN_WHEEL" in found["worker"]


def test_locks_pin_every_dependency_with_hashes() -> None:
    deps = project()
    for lock, groups in (("api.txt", ["core"]), ("worker.txt", ["core", "model"])):
        text = (LOCKS / lock).read_text()
        pins = locked(LOCKS / lock)
        assert text.count("--hash=sha256:") >= len(pins) > 0
        for group in groups:
            for requirement in deps[group]:
                name = canonicalize_name(requirement.name)
                assert name in pins, f"{lock} lacks {name}: run `make lock`"
                assert requirement.specifier.contains(pins[name], prereleases=True), (
                    f"{lock} pins {name}=={pins[name]} outside {requirement.specifier}: run `make lock`"
                )


def test_api_image_has_no_torch() -> None:
    pins = locked(LOCKS / "api.txt")
    assert not {name for name in pins if name in {"torch", "triton"} or name.startswith("nvidia-")}
    worker = locked(LOCKS / "worker.txt")
    assert worker["torch"] == "2.13.0"
    assert any(name.startswith("nvidia-cuda-runtime") for name in worker)
