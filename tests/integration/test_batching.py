"""A worker with batching on: queued requests run as one generation, each with exactly its own images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from stack.launcher import RedisProcess, base_url, start_api, start_worker, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .helpers import APP, status, submit, wait_completed, wait_status


@pytest.fixture(scope="module")
def batching_stack(
    redis_server: RedisProcess, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """API + one worker allowed 4 images per batch, on queues of their own."""
    tmp = tmp_path_factory.mktemp("batching")
    settings = stack_settings(redis_server, tmp / "storage", key_prefix="batching", max_batch_images=4)
    api = start_api(settings, None, tmp / "api.log")
    worker = start_worker(settings, tiny_checkpoint, "cpu", "batching-worker", tmp / "worker.log")
    try:
        wait_until_ready(base_url(settings), min_workers=1, processes=(api,))
        yield settings
    finally:
        worker.stop()
        api.stop()


def test_queued_requests_share_a_batch_and_get_their_own_images(batching_stack: Settings) -> None:
    headers = {"Authorization": f"Key {KEY_A}"}
    with httpx.Client(base_url=base_url(batching_stack), headers=headers, timeout=60.0) as client:
        blocker = submit(client, {"prompt": "keeps the worker busy", "num_inference_steps": 20})["request_id"]
        wait_status(client, blocker, "IN_PROGRESS")
        bodies = [
            {"prompt": "a red fox", "seed": 101, "guidance_scale": 7.5},
            {"prompt": "a much longer prompt about an owl reading in a forest", "seed": 102, "guidance_scale": 2.0},
            {"prompt": "cat", "seed": 103, "guidance_scale": 1.0, "num_images": 2},
        ]
        for body in bodies:
            body.update(sync_mode=True, output_format="png")
        ids = [submit(client, body)["request_id"] for body in bodies]
        batched = []
        for rid in ids:
            done = wait_completed(client, rid)
            assert any("batch of 3 requests" in entry["message"] for entry in done["logs"]), done["logs"]
            batched.append(client.get(f"/queue/{APP}/requests/{rid}").json())
        wait_completed(client, blocker)

        for body, in_batch in zip(bodies, batched, strict=True):
            alone = client.post(f"/{APP}", json={**body, "image_size": "square", "num_inference_steps": 10})
            assert alone.status_code == 200, alone.text
            assert [image["url"] for image in alone.json()["images"]] == [image["url"] for image in in_batch["images"]]
            assert alone.json()["seed"] == in_batch["seed"] == body["seed"]
        blocker_logs = status(client, blocker).json()["logs"]
        assert not any("batch of" in entry["message"] for entry in blocker_logs)
