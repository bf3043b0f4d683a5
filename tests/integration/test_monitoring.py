"""deploy/monitoring: every metric the Grafana dashboard queries is one the live server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveStack

from .helpers import submit, wait_completed

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_samples(stack: LiveStack) -> set[str]:
    with stack.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    return {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_dashboard_queries_only_exported_metrics(live_stack: LiveStack) -> None:
    with live_stack.client() as client:  # one finished request, so every counter has a sample
        wait_completed(client, submit(client, {"prompt": "a red square"})["request_id"])
    exported = exported_samples(live_stack)
    queries = dashboard_queries()
    assert len(queries) >= 8
    wanted = {name for query in queries for name in re.findall(r"\bbitdance_[a-z_]+", query)}
    # The dashboard covers what an operator watches.
    for metric in (
        "bitdance_queue_depth",
        "bitdance_requests",
        "bitdance_inference_seconds_bucket",
        "bitdance_workers_alive",
        "bitdance_images_generated_total",
        "bitdance_webhook_backlog",
    ):
        assert metric in wanted, f"the dashboard does not chart {metric}"
    missing = wanted - exported
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"


def test_prometheus_config_scrapes_the_metrics_path() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs and all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert jobs["bitdance-api"]["static_configs"][0]["targets"] == ["api:8000"]  # the compose service
