"""Health, metrics, OpenAPI, uploads, 422 and 413 over real HTTP, and the HTTPS API with its CA."""

from __future__ import annotations

import ssl

import httpx

from tests.conftest import KEY_A, KEY_B, LiveStack, TlsApi

from .helpers import APP


def test_health_metrics_openapi(live_stack: LiveStack) -> None:
    with live_stack.client(None) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["redis"] is True and health.json()["workers"] >= 1
        live = health.json()["live_workers"]
        assert len(live) == health.json()["workers"] and live[0]["device"] == "cpu"
        model = live[0]["model"]  # what each live worker loaded, as its heartbeat published it
        assert model["path"] == str(live_stack.model_path.resolve()) and model["name"] == live_stack.model_path.name
        assert model["variant"] == "tiny-16x" and model["parallel_num"] == 16
        assert model["random"] is True and model["simulated"] is False
        metrics = client.get("/metrics").text
        for name in ("bitdance_queue_depth", "bitdance_requests{", "bitdance_inference_seconds_bucket"):
            assert name in metrics
        spec = client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": APP}).json()
        assert spec["info"]["title"] == f"Queue OpenAPI for {APP}"
        assert {"BitDanceInput", "BitDanceOutput", "QueueStatus"} <= set(spec["components"]["schemas"])
        assert "BitDanceInput" in client.get("/openapi.json").text


def test_validation_and_body_limits_over_http(live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        response = client.post(f"/queue/{APP}", json={"prompt": "p", "num_images": 5})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "num_images"]
        response = client.post(f"/{APP}", json={"prompt": "p", "guidance_scale": 20})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
            "body",
            "guidance_scale",
        ]
        big = client.post(f"/queue/{APP}", content=b"x" * (live_stack.settings.max_body_bytes + 1))
        assert big.status_code == 413


def test_upload_flow_like_the_js_client(live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        initiate = client.post(
            "/storage/upload/initiate",
            params={"storage_type": "fal-cdn-v3"},
            json={"content_type": "text/plain", "file_name": "notes.txt"},
            headers={"X-Fal-Object-Lifecycle": '{"expiration_duration_seconds": 3600}'},
        )
        assert initiate.status_code == 200
        target = initiate.json()
    put = httpx.put(target["upload_url"], content=b"hello bitdance", headers={"Content-Type": "text/plain"})
    assert put.status_code == 200
    download = httpx.get(target["file_url"])
    assert download.content == b"hello bitdance"
    assert download.headers["content-type"].startswith("text/plain") and download.headers["content-length"] == "14"
    assert httpx.put(target["upload_url"], content=b"again").status_code == 409  # single use: already completed


def test_https_api_with_local_ca(tls_api_server: TlsApi) -> None:
    verify = ssl.create_default_context(cafile=str(tls_api_server.ca_file))
    for host in ("127.0.0.1", "localhost"):
        url = tls_api_server.url.replace("127.0.0.1", host)
        response = httpx.get(f"{url}/health", verify=verify)
        assert response.status_code == 200
    with httpx.Client(base_url=tls_api_server.url, verify=verify) as client:
        submitted = client.post(f"/queue/{APP}", json={"prompt": ""}, headers={"Authorization": f"Key {KEY_A}"})
        assert submitted.status_code == 422
        other = client.get(f"/queue/{APP}/requests/x/status", headers={"Authorization": f"Key {KEY_B}"})
        assert other.status_code == 404
