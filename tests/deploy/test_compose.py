"""docker/compose.yaml, checked by Debian's docker-compose (its own compose-spec schema), offline."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

from .conftest import DEPLOY, DOCKER, tool

GPU_SERVICES = [f"worker-{n}" for n in range(8)]


def compose_config(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on a copy of the compose file with docker/env.example as its .env."""
    shutil.copy(DOCKER / "compose.yaml", tmp_path / "compose.yaml")
    shutil.copy(DOCKER / "env.example", tmp_path / ".env")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("BITDANCE_", "COMPOSE_"))}
    child_env.update(env or {})
    return subprocess.run(
        [tool("docker-compose"), "-f", str(tmp_path / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=child_env,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = compose_config(tmp_path_factory.mktemp("compose"))
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = yaml.safe_load(out.stdout)
    return parsed


def test_no_top_level_name_and_all_services(config: dict[str, Any]) -> None:
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert "name" not in raw, "Debian's docker-compose rejects a top-level name"
    assert set(config["services"]) == {"redis", "api", "proxy", "worker-simulated", *GPU_SERVICES}


def test_one_worker_per_gpu_profile(config: dict[str, Any]) -> None:
    for n, name in enumerate(GPU_SERVICES):
        worker = config["services"][name]
        assert worker["profiles"] == [f"gpu{n}"]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(n)] and device["capabilities"] == ["gpu"]
        env = worker["environment"]
        assert env["BITDANCE_DEVICE"] == "cuda:0"  # the container sees only its own GPU
        assert env["BITDANCE_MODEL_PATH"] == "/weights/BitDance-14B-64x"  # MODEL from the .env
        assert env["BITDANCE_MAX_BATCH_IMAGES"] == "1"  # any BITDANCE_* line of the .env
        assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.probe"]
        assert worker["depends_on"]["api"]["condition"] == "service_healthy"
        assert worker["build"]["target"] == "worker"


def test_env_example_sets_only_real_settings() -> None:
    fields = {f"BITDANCE_{name.upper()}" for name in Settings.model_fields}
    names = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    compose_only = {"BITDANCE_PUBLISH_PORT", "BITDANCE_PUBLISH_ADDR"}  # read by compose.yaml itself
    unknown = {n for n in names if n.startswith("BITDANCE_") and n not in compose_only} - fields
    assert not unknown


def test_api_and_redis(config: dict[str, Any]) -> None:
    api, redis = config["services"]["api"], config["services"]["redis"]
    assert api["build"]["target"] == "api"
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") or "/data" in v for v in _volumes(redis))


def _volumes(service: dict[str, Any]) -> list[str]:
    return [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in service["volumes"]]


def test_missing_required_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    shutil.copy(DOCKER / "compose.yaml", tmp_path / "env" / "compose.yaml")
    example = (DOCKER / "env.example").read_text().replace("BITDANCE_API_KEYS=", "#BITDANCE_API_KEYS=")
    (tmp_path / "env" / ".env").write_text(example)
    out = subprocess.run(
        [tool("docker-compose"), "-f", "compose.yaml", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path / "env",
        env={k: v for k, v in os.environ.items() if not k.startswith("BITDANCE_")},
        check=False,
    )
    assert out.returncode != 0 and "BITDANCE_API_KEYS" in out.stderr


def test_clients_reach_the_api_through_nginx_published_on_loopback_by_default(
    config: dict[str, Any], tmp_path: Path
) -> None:
    api, proxy = config["services"]["api"], config["services"]["proxy"]
    assert "ports" not in api and api["expose"] == ["8000"]  # the API itself is not published
    assert proxy["ports"] == ["127.0.0.1:8000:8080/tcp"]
    opened = compose_config(tmp_path, {"BITDANCE_PUBLISH_ADDR": "0.0.0.0", "BITDANCE_PUBLISH_PORT": "9000"})
    assert opened.returncode == 0, opened.stderr
    assert yaml.safe_load(opened.stdout)["services"]["proxy"]["ports"] == ["0.0.0.0:9000:8080/tcp"]


def test_the_proxy_is_the_official_nginx_pinned_non_root_read_only(config: dict[str, Any]) -> None:
    proxy = config["services"]["proxy"]
    name, tag = proxy["image"].split(":")
    assert name == "nginx" and tag[0].isdigit() and tag.count(".") >= 1  # a pinned release, not latest
    assert proxy["read_only"] is True and proxy["tmpfs"] == ["/tmp"] and proxy["user"] == "101:101"
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/health/live" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["stop_grace_period"] == config["services"]["api"]["stop_grace_period"]
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["proxy"]
    (mount,) = raw["volumes"]
    source, target, mode = mount.split(":")
    assert target == "/etc/nginx/nginx.conf" and mode == "ro"
    assert (DOCKER / source).resolve() == DEPLOY / "k8s" / "base" / "nginx.conf"  # the file Kubernetes uses


def test_a_simulated_worker_without_gpu_runs_from_the_api_image(config: dict[str, Any]) -> None:
    """Issue 21: MODEL=simulated became /weights/simulated, and no override removes a GPU reservation."""
    worker = config["services"]["worker-simulated"]
    assert worker["profiles"] == ["simulated"]
    assert worker["image"] == config["services"]["api"]["image"]  # the slim image: no torch needed
    assert "build" not in worker and "deploy" not in worker  # no GPU reservation, nothing to build
    assert worker["environment"]["BITDANCE_MODEL_PATH"] == "simulated"
    assert worker["environment"]["BITDANCE_DEVICE"] == "cpu"
    assert worker["command"][:3] == ["python", "-m", "worker"]
    assert "simulated" in worker["command"]
    assert not any("/weights" in v for v in _volumes(worker))  # no checkpoint folder needed
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.probe"]
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"


def test_redis_and_nginx_images_can_be_local_ones(tmp_path: Path) -> None:
    """Without a registry: images built from Debian packages replace the official Redis and nginx."""
    local = {"BITDANCE_REDIS_IMAGE": "local/redis:bookworm", "BITDANCE_NGINX_IMAGE": "local/nginx:bookworm"}
    out = compose_config(tmp_path, local)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert services["redis"]["image"] == "local/redis:bookworm"
    assert services["proxy"]["image"] == "local/nginx:bookworm"


def test_builds_take_a_base_image_and_an_extra_ca_from_the_environment(tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    out = compose_config(tmp_path, {"PYTHON_IMAGE": "local/python:3.11", "EXTRA_CA_CERTS": ca})
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    for name in ("api", "worker-0"):
        assert services[name]["build"]["args"] == {"PYTHON_IMAGE": "local/python:3.11", "EXTRA_CA_CERTS": ca}
