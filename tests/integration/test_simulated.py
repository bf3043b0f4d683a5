"""The simulated model end to end: real redis-server, uvicorn and ``python -m worker --model simulated``.

One TLS stack (so the real ``fal-client`` can talk to it) with a 4-slot simulated worker, plus a
second worker process with failure injection for the failure test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from core.requests.api_store import create_request
from core.requests.records import NewRequest
from core.settings import Settings, child_environment
from stack.launcher import ManagedProcess, RedisProcess, base_url, free_port, start_api, start_worker, wait_until_ready
from stack.tls import ensure_tls_files
from tests.conftest import KEY_A, stack_settings

from .helpers import APP, poll_until, status, submit, wait_completed

SLOTS = 4
SPEED = 6.0  # upstream-readme profile: 1024x1024 at 25 steps ~ 6 s / 6 = 1 s


@dataclass
class SimulatedStack:
    settings: Settings
    url: str
    ca_file: Path
    log_dir: Path
    api: ManagedProcess
    worker: ManagedProcess

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Key {KEY_A}"}
        verify = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, verify=verify)


@pytest.fixture(scope="module")
def simulated_stack(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedStack]:
    log_dir = tmp_path_factory.mktemp("simulated-logs")
    tls = ensure_tls_files(tmp_path_factory.mktemp("simulated-tls"))
    settings = stack_settings(
        redis_server,
        tmp_path_factory.mktemp("simulated-storage"),
        key_prefix="simulated",
        simulated_slots=SLOTS,
        simulated_speed=SPEED,
    )
    worker = start_worker(settings, Path("simulated"), "cpu", "sim", log_dir / "worker.log")
    api = start_api(settings, tls, log_dir / "api.log")
    url = base_url(settings, tls)
    try:
        wait_until_ready(url, min_workers=SLOTS, ca_file=tls.ca, processes=(api, worker))
        yield SimulatedStack(settings, url, tls.ca, log_dir, api, worker)
    finally:
        worker.stop()
        api.stop()


def test_simulated_flow_through_fal_client(simulated_stack: SimulatedStack) -> None:
    """The real fal-client's subscribe: queue updates with per-step logs, then a real JPEG of the size asked."""
    script = textwrap.dedent(
        """
        import json, fal_client
        updates = []
        result = fal_client.subscribe(
            "fal-ai/bitdance",
            arguments={"prompt": "a lighthouse at dusk", "image_size": "landscape_4_3", "seed": 7,
                       "num_inference_steps": 20},
            with_logs=True,
            on_queue_update=lambda u: updates.append(type(u).__name__ + ":" + json.dumps(getattr(u, "logs", None))),
        )
        print(json.dumps({"result": result, "updates": updates}))
        """
    )
    host = simulated_stack.url.removeprefix("https://")
    env = {
        **os.environ,
        "FAL_KEY": KEY_A,
        "FAL_RUN_HOST": host,
        "FAL_QUEUE_RUN_HOST": f"{host}/queue",
        "SSL_CERT_FILE": str(simulated_stack.ca_file),
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = report["result"]
    assert result["seed"] == 7 and result["has_nsfw_concepts"] == [False]
    image = result["images"][0]
    assert (image["width"], image["height"]) == (1152, 896)  # landscape_4_3 snapped as the 64x checkpoint does
    assert any(u.startswith("InProgress") and "patch " in u for u in report["updates"])
    with simulated_stack.client() as client:
        data = client.get(image["url"]).content
    assert data[:3] == b"\xff\xd8\xff" and len(data) == image["file_size"]
    assert Image.open(io.BytesIO(data)).size == (1152, 896)

    # deterministic from seed and prompt: the same request gives the same bytes
    with simulated_stack.client() as client:
        body = {"prompt": "a lighthouse at dusk", "image_size": "landscape_4_3", "seed": 7, "num_inference_steps": 20}
        again = client.post(f"/{APP}", json=body).json()
        assert client.get(again["images"][0]["url"]).content == data


def test_simulated_worker_imports_no_torch(simulated_stack: SimulatedStack) -> None:
    """A simulated worker process runs a request end to end without ever importing torch."""
    settings = simulated_stack.settings.model_copy(update={"key_prefix": "simulated-notorch", "simulated_slots": 1})
    probe = textwrap.dedent(
        """
        import json, runpy, sys
        sys.argv = ["worker", "--model", "simulated", "--burst", "--name", "probe"]
        try:
            runpy.run_module("worker", run_name="__main__")
        except SystemExit:
            pass
        print(json.dumps({"torch": "torch" in sys.modules}))
        """
    )
    client = redis.Redis.from_url(settings.redis_url)
    new = NewRequest(
        request_id="notorch-1",
        owner="probe",
        endpoint=settings.endpoint_id,
        input={"prompt": "no torch here", "num_inference_steps": 10},
        priority="normal",
        files_base="http://127.0.0.1",
    )
    create_request(client, settings, new)
    env = child_environment(settings)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False}
    record = client.hgetall(f"{settings.key_prefix}:req:notorch-1")
    assert record[b"status"] == b"COMPLETED" and b"error" not in record, record
    client.close()


def test_simulated_cancel_and_nsfw_flag(simulated_stack: SimulatedStack) -> None:
    with simulated_stack.client() as client:
        slow = submit(client, {"prompt": "slow one", "image_size": "square_hd", "num_inference_steps": 100})
        poll_until(lambda: any("patch " in e["message"] for e in status(client, slow["request_id"]).json()["logs"]))
        assert client.put(slow["cancel_url"]).status_code == 202
        final = wait_completed(client, slow["request_id"], timeout_s=20)
        assert final["error_type"] == "client_cancelled"
        patches = [e["message"] for e in final["logs"] if e["message"].startswith("patch ")]
        assert patches and not patches[-1].startswith("patch 64/64")  # cancelled before the last patch
        assert client.get(slow["response_url"]).status_code == 499

        flagged = submit(client, {"prompt": "an nsfw test prompt", "output_format": "png"})
        wait_completed(client, flagged["request_id"], timeout_s=20)
        result = client.get(flagged["response_url"]).json()
        assert result["has_nsfw_concepts"] == [True]
        image = Image.open(io.BytesIO(client.get(result["images"][0]["url"]).content))
        assert image.format == "PNG" and image.getextrema() == ((0, 0), (0, 0), (0, 0))  # redacted


def test_simulated_slots_run_concurrently(simulated_stack: SimulatedStack) -> None:
    """8 requests on 4 slots: at most 4 run at once, and 4 do."""
    with simulated_stack.client() as client:
        health = client.get("/health").json()
        assert health["workers"] == SLOTS
        ids = [submit(client, {"prompt": f"slot {i}", "image_size": "square_hd"})["request_id"] for i in range(8)]
        for rid in ids:
            assert wait_completed(client, rid, timeout_s=30).get("error") is None
    redis_client = redis.Redis.from_url(simulated_stack.settings.redis_url, decode_responses=True)
    spans = []
    for rid in ids:
        record = redis_client.hgetall(f"{simulated_stack.settings.key_prefix}:req:{rid}")
        spans.append((float(record["started_at"]), float(record["completed_at"])))
    redis_client.close()
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, most = 0, 0
    for _, delta in edges:
        running += delta
        most = max(most, running)
    assert most == SLOTS


def test_simulated_failure_injection(simulated_stack: SimulatedStack, tmp_path: Path) -> None:
    """A worker with BITDANCE_SIMULATED_FAILURE_RATE=0.5: about half fail as the real worker reports failures."""
    settings = simulated_stack.settings.model_copy(
        update={"key_prefix": "simulated-failing", "simulated_failure_rate": 0.5, "simulated_speed": 60.0}
    )
    worker = start_worker(settings, Path("simulated"), "cpu", "failing", tmp_path / "worker.log")
    api_settings = settings.model_copy(update={"port": free_port()})
    api = start_api(api_settings, None, tmp_path / "api.log")
    try:
        url = base_url(api_settings)
        wait_until_ready(url, min_workers=SLOTS, processes=(api, worker))
        with httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY_A}"}, timeout=30) as client:
            ids = [submit(client, {"prompt": f"maybe {i}"})["request_id"] for i in range(24)]
            outcomes = [wait_completed(client, rid, timeout_s=30) for rid in ids]
            failed = [o for o in outcomes if o.get("error_type")]
            assert 0 < len(failed) < len(ids)
            assert {o["error_type"] for o in failed} == {"runner_server_error"}
            result = client.get(f"/queue/{APP}/requests/{failed[0]['request_id']}")
            assert result.status_code == 500 and "SimulatedFailure" in result.text
            metrics = client.get("/metrics").text
            assert f'bitdance_requests_completed_total{{outcome="ok"}} {float(len(ids) - len(failed))}' in metrics
            assert f'bitdance_requests_completed_total{{outcome="runner_server_error"}} {float(len(failed))}' in metrics
    finally:
        worker.stop()
        api.stop()


def run_loadtest(stack: SimulatedStack, tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "loadtest", "--url", stack.url, "--key", KEY_A, "--ca-file", str(stack.ca_file)]
    command += [*args, "--json", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_loadtest_report_agrees_with_server_metrics(simulated_stack: SimulatedStack, tmp_path: Path) -> None:
    """A short closed-loop run on the status stream: every request ok, and the kit's counts and inference
    seconds equal the deltas of the server's /metrics."""
    report = run_loadtest(
        simulated_stack, tmp_path, "--concurrency", "4", "--requests", "12", "--status", "stream",
        "--slo-s", "30", "--csv", str(tmp_path / "run"), "--start-jitter", "1.5",
    )  # fmt: skip
    assert report["requests"] == {"sent": 12, "ok": 12, "errors": 0, "lost": 0, "completed_by_endpoint": 12}
    assert set(report["phases"]) == {"submit", "queue_wait", "inference", "result", "download", "e2e"}
    assert report["phases"]["e2e"]["count"] == 12 and report["throughput"]["images_per_s"] > 0
    assert report["goodput"]["good"] == 12
    agreement = report["server"]["agreement"]
    assert agreement["completed"]["kit"] == agreement["completed"]["server"] == 12
    assert abs(agreement["inference_s_reported"]["relative_difference"]) < 1e-6
    assert report["locust"]["GET status_stream"]["requests"] >= 12
    assert report["config"]["start_jitter_s"] == 1.5
    with (tmp_path / "run_requests.csv").open() as handle:
        starts = sorted(float(row["started_at"]) for row in csv.DictReader(handle))
    assert starts[3] - starts[0] > 0.05  # the 4 users' first requests spread over the jitter, not in one instant
    phases_csv = (tmp_path / "run_phases.csv").read_text().splitlines()
    assert (
        phases_csv[0].startswith("phase,count,p50_s")
        and len((tmp_path / "run_requests.csv").read_text().splitlines()) == 13
    )


def test_loadtest_with_fal_client_open_loop(simulated_stack: SimulatedStack, tmp_path: Path) -> None:
    """Poisson arrivals through the real fal-client, with the built-in mix."""
    report = run_loadtest(simulated_stack, tmp_path, "--client", "fal-client", "--rate", "3", "--requests", "6")
    assert report["requests"]["ok"] == 6 and report["errors"] == {}
    assert report["phases"]["queue_wait"]["count"] == 6
    assert report["server"]["agreement"]["completed_ok"]["kit"] == 6
