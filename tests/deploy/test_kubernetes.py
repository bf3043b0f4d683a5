"""deploy/k8s: every overlay builds with kustomize and its objects validate against Kubernetes' schemas,
offline; the wiring (probes, settings, queue names, volumes) matches what the code really serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from rq.queue import Queue

from core.settings import Settings

from .conftest import DEPLOY, tool

OVERLAYS = sorted(p.parent for p in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.30.0"

# The part of KEDA's ScaledObject CRD (keda.sh/v1alpha1) that our manifests use; kubernetes-validate
# ships no schemas for custom resources.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


def build(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_there_are_overlays() -> None:
    assert {p.name for p in OVERLAYS} >= {"single-gpu", "autoscale"}


def test_every_object_is_valid_against_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_an_invalid_object_is_refused() -> None:
    """The validator really checks: a typo in a field name fails strict validation."""
    deployment = by_kind(build(OVERLAYS[0]), "Deployment")["bitdance-api"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = by_kind(objects, "Deployment")[name]
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_settings_are_real_settings(objects: list[dict[str, Any]]) -> None:
    fields = {f"BITDANCE_{name.upper()}" for name in Settings.model_fields}
    config = by_kind(objects, "ConfigMap")["bitdance-config"]["data"]
    env_names = {e["name"] for d in ("bitdance-api", "bitdance-worker") for e in container(objects, d).get("env", [])}
    unknown = (set(config) | env_names) - fields
    assert not unknown, f"not settings of core/settings.py: {sorted(unknown)}"


def test_probes_point_at_what_the_services_serve(objects: list[dict[str, Any]]) -> None:
    from server.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])
    api = container(objects, "bitdance-api")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    worker = container(objects, "bitdance-worker")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["exec"]["command"] == ["python", "-m", "worker.probe"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_workers_get_time_to_finish_an_image_and_share_storage(objects: list[dict[str, Any]]) -> None:
    worker = by_kind(objects, "Deployment")["bitdance-worker"]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= 600
    claims = {v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"]}
    api = by_kind(objects, "Deployment")["bitdance-api"]["spec"]["template"]["spec"]
    api_claims = {v["persistentVolumeClaim"]["claimName"] for v in api["volumes"] if "persistentVolumeClaim" in v}
    assert "bitdance-storage" in claims & api_claims
    pvcs = by_kind(objects, "PersistentVolumeClaim")
    assert pvcs["bitdance-storage"]["spec"]["accessModes"] == ["ReadWriteMany"]
    redis = by_kind(objects, "StatefulSet")["bitdance-redis"]["spec"]
    assert "--appendonly" in redis["template"]["spec"]["containers"][0]["args"]
    assert redis["volumeClaimTemplates"], "Redis keeps its append-only file on a persistent volume"
    assert set(by_kind(objects, "PodDisruptionBudget")) == {"bitdance-api", "bitdance-worker"}
    assert "bitdance-api" in by_kind(objects, "HorizontalPodAutoscaler")


def test_keda_scales_workers_on_the_real_queue_names() -> None:
    objects = build(DEPLOY / "k8s" / "overlays" / "autoscale")
    scaled = by_kind(objects, "ScaledObject")["bitdance-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(objects, "Deployment")
    settings = Settings()  # the prefix the ConfigMap leaves at its default
    expected = {Queue.redis_queue_namespace_prefix + name for name in (settings.queue_normal, settings.queue_low)}
    assert {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]} == expected
    service = by_kind(objects, "Service")["bitdance-redis"]
    namespace = service["metadata"]["namespace"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == f"bitdance-redis.{namespace}.svc.cluster.local:6379"


def test_the_api_is_reached_through_its_nginx_sidecar_only(objects: list[dict[str, Any]]) -> None:
    pod = by_kind(objects, "Deployment")["bitdance-api"]["spec"]["template"]
    spec = pod["spec"]
    (proxy,) = spec["initContainers"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar: up before the API, down after it
    assert proxy["image"].startswith("nginx:") and proxy["image"].split(":")[1][0].isdigit()
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True and proxy["securityContext"]["runAsUser"] == 101
    assert {"ip": "127.0.0.1", "hostnames": ["api"]} in spec["hostAliases"]  # nginx.conf's upstream api:8000
    api = container(objects, "bitdance-api")
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["BITDANCE_HOST"] == "127.0.0.1" and env["BITDANCE_PORT"] == "8000"
    assert env["BITDANCE_METRICS_REQUIRE_KEY"] == "true"  # loopback alone would open /metrics
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert "ports" not in api and ports == {"http": 8080}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["port"] == "http"  # through the proxy
    service = by_kind(objects, "Service")["bitdance-api"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    conf = volumes[mounts["/etc/nginx/nginx.conf"]["name"]]["configMap"]["name"]
    assert (
        by_kind(objects, "ConfigMap")[conf]["data"]["nginx.conf"]
        == (DEPLOY / "k8s" / "base" / "nginx.conf").read_text()
    )
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
