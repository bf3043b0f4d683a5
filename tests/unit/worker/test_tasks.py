"""Task lifecycle with a fake pipeline on a real Redis: every path ends COMPLETED."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from core.errors import RunnerServerError
from core.protocol import RequestStatus
from core.requests import scripts
from core.requests.api_store import create_request
from core.requests.records import NewRequest
from core.requests.rq_integration import OutcomeLogFilter
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from core.storage import LocalStorage
from model.safety import NoSafetyChecker, SafetyChecker
from worker.tasks import TaskRunner, WorkerServices, public_error

from .fakes import FakePipeline, FlagAll


def make_runner(
    settings: Settings, pipe: FakePipeline, safety: SafetyChecker | None = None
) -> tuple[TaskRunner, WorkerRequestStore]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = WorkerRequestStore(client, settings)
    services = WorkerServices(
        settings=settings,
        pipe=pipe,
        request_store=store,
        storage=LocalStorage(settings.storage_dir),
        safety=safety or NoSafetyChecker(),
        worker_name="unit-worker",
    )
    return TaskRunner(services), store


def submit(settings: Settings, rid: str, **inputs: Any) -> None:
    payload = {"prompt": "a lighthouse", "image_size": "square", "num_inference_steps": 10, **inputs}
    conn = redis.Redis.from_url(settings.redis_url)
    new = NewRequest(rid, "owner-1", settings.endpoint_id, payload, "normal", "http://files.test")
    create_request(conn, settings, new)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(progress_interval_s=0.0)


def test_success_records_result_logs_and_files(settings: Settings) -> None:
    pipe = FakePipeline(steps=5)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-ok", seed=None, num_images=2, output_format="png")
    assert runner.run("req-ok") == "ok"
    record = store.get("req-ok")
    assert record is not None and record.status is RequestStatus.COMPLETED and record.error is None
    assert record.result is not None
    assert record.result["prompt"] == "a lighthouse"
    assert isinstance(record.result["seed"], int)  # a concrete seed was picked and passed
    assert pipe.calls[0]["seed"] == record.result["seed"]
    assert (pipe.calls[0]["height"], pipe.calls[0]["width"]) == (512, 512)
    assert record.result["has_nsfw_concepts"] == [False, False]
    images = record.result["images"]
    assert len(images) == 2 and images[0]["content_type"] == "image/png"
    token_path = images[0]["url"].removeprefix("http://files.test/files/")
    stored = Path(settings.storage_dir) / token_path
    assert stored.stat().st_size == images[0]["file_size"]
    assert Image.open(stored).size == (images[0]["width"], images[0]["height"])
    logs = store.client.lrange(store.keys.logs("req-ok"), 0, -1)
    patch_logs = [line for line in logs if '"patch ' in line]
    assert len(patch_logs) == 5  # one entry per decoding step (patch)
    assert '"patch 5/5, 10 sampling steps each' in patch_logs[-1]
    assert '"Done: 2 image(s) ready' in logs[-1]  # the last entry comes once the images are stored
    assert record.inference_time is not None and record.inference_time >= 0


def test_failure_at_step_k_completes_with_error(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline(steps=5, fail_at_step=3))
    submit(settings, "req-fail")
    assert runner.run("req-fail") == "error"
    record = store.get("req-fail")
    assert record is not None and record.status is RequestStatus.COMPLETED
    assert record.error is not None
    assert record.error.status_code == 500
    assert record.error.body["error_type"] == "runner_server_error"
    assert "boom" not in record.error.body["detail"]  # internals are not shown
    assert store.client.sismember(store.keys.active, "req-fail") == 0


def test_cancel_while_running_stops_within_one_step(settings: Settings) -> None:
    pipe = FakePipeline(steps=10)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-cancel")
    seen: list[int] = []

    def cancel_at_two(step: int) -> None:
        seen.append(step)
        if step == 2:
            store.client.hset(store.keys.record("req-cancel"), "cancel", "1")

    pipe.on_step = cancel_at_two
    assert runner.run("req-cancel") == "client_cancelled"
    assert seen == [1, 2]  # step 3 never started
    record = store.get("req-cancel")
    assert record is not None and record.error is not None
    assert record.error.status_code == 499
    assert record.error.body == {"detail": "Request cancelled", "error_type": "client_cancelled"}
    logs = store.client.lrange(store.keys.logs("req-cancel"), 0, -1)
    assert not any('"Done' in line for line in logs)
    # RQ's "Job OK" line (it says so for every job function that returns) names the real outcome
    rq_line = logging.LogRecord("rq.worker", logging.INFO, __file__, 1, "Worker %s: %s: %s (%s)",
                                ("w", "bitdance-normal", "Job OK", "req-cancel"), None)  # fmt: skip
    assert OutcomeLogFilter(runner).filter(rq_line)
    assert rq_line.getMessage() == "Worker w: bitdance-normal: Job ended: client_cancelled (req-cancel)"


def test_cancelled_before_start_never_runs(settings: Settings) -> None:
    pipe = FakePipeline()
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-early")
    call = scripts.cancel_queued_call(
        store.keys, request_id="req-early", mode=scripts.CancelMode.CANCEL, now=time.time(), ttl_s=60
    )
    assert store._cancel(keys=call.keys, args=call.args) == scripts.CancelOutcome.CANCELLED
    assert runner.run("req-early") == "completed"
    assert pipe.calls == []


def test_start_deadline_passed_gives_504(settings: Settings) -> None:
    pipe = FakePipeline()
    runner, store = make_runner(settings, pipe)
    conn = redis.Redis.from_url(settings.redis_url)
    payload = {"prompt": "late", "image_size": "square"}
    create_request(conn, settings, NewRequest("req-late", "o", settings.endpoint_id, payload, "low", "http://f", 0.01))
    time.sleep(0.05)
    assert runner.run("req-late") == "request_timeout"
    record = store.get("req-late")
    assert record is not None and record.error is not None
    assert record.error.status_code == 504
    assert record.error.headers["X-Fal-Request-Timeout-Type"] == "user"
    assert pipe.calls == []


def test_invalid_stored_input_gives_422(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline())
    submit(settings, "req-422", num_images=9)
    assert runner.run("req-422") == "validation_error"
    record = store.get("req-422")
    assert record is not None and record.error is not None
    assert record.error.status_code == 422
    assert record.error.body["detail"][0]["loc"] == ["body", "num_images"]


def test_sync_mode_returns_data_uri_and_stores_nothing(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline())
    submit(settings, "req-sync", sync_mode=True)
    assert runner.run("req-sync") == "ok"
    record = store.get("req-sync")
    assert record is not None and record.result is not None
    url = record.result["images"][0]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (512, 512)
    assert not [p for p in Path(settings.storage_dir).iterdir() if p.name != ".staging"]


def test_flagged_images_are_black(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline(), safety=FlagAll())
    submit(settings, "req-nsfw", sync_mode=True, output_format="png")
    runner.run("req-nsfw")
    record = store.get("req-nsfw")
    assert record is not None and record.result is not None
    assert record.result["has_nsfw_concepts"] == [True]
    data = base64.b64decode(record.result["images"][0]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).getextrema() == ((0, 0), (0, 0), (0, 0))


def test_safety_checker_off_keeps_images(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline(), safety=FlagAll())
    submit(settings, "req-off", enable_safety_checker=False)
    runner.run("req-off")
    record = store.get("req-off")
    assert record is not None and record.result is not None
    assert record.result["has_nsfw_concepts"] == [False]


def test_same_seed_same_bytes(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline())
    for rid in ("req-s1", "req-s2"):
        submit(settings, rid, seed=42, sync_mode=True)
        runner.run(rid)
    urls = [store.get(rid).result["images"][0]["url"] for rid in ("req-s1", "req-s2")]  # type: ignore[union-attr]
    assert urls[0] == urls[1]


def test_unknown_request_is_skipped(settings: Settings) -> None:
    runner, _ = make_runner(settings, FakePipeline())
    assert runner.run("nope") == "missing"


def test_public_error_hides_internals() -> None:
    assert public_error(KeyError("secret")).detail == "Generation failed (KeyError)"
    assert isinstance(public_error(RunnerServerError("x")), RunnerServerError)
