"""Dynamic batching on a real Redis with a fake pipeline: who joins, cancels inside a batch, recovery."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rq.job import Job

from core.protocol import RequestStatus
from core.requests.records import Keys
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker import recovery

from .fakes import FakePipeline
from .test_tasks import make_runner, submit


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(progress_interval_s=0.0, max_batch_images=4)


def queued(store: WorkerRequestStore, queue: str) -> list[str]:
    return store.queued_ids(queue, 100)


def test_compatible_queued_requests_join_the_batch(settings: Settings) -> None:
    pipe = FakePipeline(steps=3)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-a", seed=1)
    submit(settings, "req-b", seed=2, num_images=2, prompt="another prompt", guidance_scale=3.0)
    submit(settings, "req-wide", image_size="landscape_16_9")  # another size: not batched
    submit(settings, "req-big", num_images=2)  # would make 5 images: over the limit
    submit(settings, "req-steps", num_inference_steps=4)  # another step count
    submit(settings, "req-c", seed=3, output_format="png", sync_mode=True)

    assert runner.run("req-a") == "ok"
    assert pipe.batches == [3]
    assert [c["seed"] for c in pipe.calls] == [1, 2, 3]
    for rid, count in (("req-a", 1), ("req-b", 2), ("req-c", 1)):
        record = store.get(rid)
        assert record is not None and record.status is RequestStatus.COMPLETED and record.result is not None
        assert len(record.result["images"]) == count
        assert any("batch of 3 requests" in entry for entry in store.client.lrange(store.keys.logs(rid), 0, -1))
    assert store.get("req-c").result["images"][0]["url"].startswith("data:image/png")  # type: ignore[union-attr]
    # The others wait in their queue, in order; the companions left it.
    assert queued(store, settings.queue_normal) == ["req-a", "req-wide", "req-big", "req-steps"]
    for rid in ("req-wide", "req-big", "req-steps"):
        assert store.get(rid).status is RequestStatus.IN_QUEUE  # type: ignore[union-attr]
    # req-a is still listed only because this test called the runner instead of RQ popping it;
    # should RQ hand a finished request over again, nothing runs twice.
    assert runner.run("req-a") == "completed"
    assert pipe.batches == [3]


def test_batching_off_by_default(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(progress_interval_s=0.0)
    pipe = FakePipeline(steps=2)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-1")
    submit(settings, "req-2")
    assert runner.run("req-1") == "ok"
    assert pipe.batches == [1]
    assert store.get("req-2").status is RequestStatus.IN_QUEUE  # type: ignore[union-attr]


def test_a_cancelled_member_completes_at_once_and_the_rest_finish(settings: Settings) -> None:
    pipe = FakePipeline(steps=6)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-keep", seed=1)
    submit(settings, "req-drop", seed=2)
    states: list[RequestStatus] = []

    def cancel_drop(step: int) -> None:
        if step == 2:
            store.client.hset(store.keys.record("req-drop"), "cancel", "1")
        if step == 4:
            states.append(store.get("req-drop").status)  # type: ignore[union-attr]

    pipe.on_step = cancel_drop
    assert runner.run("req-keep") == "ok"
    assert states == [RequestStatus.COMPLETED]  # completed within a step, while the batch went on
    dropped = store.get("req-drop")
    assert dropped is not None and dropped.error is not None and dropped.error.status_code == 499
    assert dropped.result is None
    kept = store.get("req-keep")
    assert kept is not None and kept.result is not None and kept.error is None


def test_every_member_cancelled_stops_the_generation(settings: Settings) -> None:
    pipe = FakePipeline(steps=6)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-x")
    submit(settings, "req-y")
    seen: list[int] = []

    def cancel_both(step: int) -> None:
        seen.append(step)
        if step == 1:
            for rid in ("req-x", "req-y"):
                store.client.hset(store.keys.record(rid), "cancel", "1")

    pipe.on_step = cancel_both
    assert runner.run("req-x") == "client_cancelled"
    assert seen == [1]
    for rid in ("req-x", "req-y"):
        assert store.get(rid).error.status_code == 499  # type: ignore[union-attr]


def test_a_failed_generation_fails_every_member(settings: Settings) -> None:
    runner, store = make_runner(settings, FakePipeline(steps=3, fail_at_step=2))
    submit(settings, "req-f1")
    submit(settings, "req-f2")
    assert runner.run("req-f1") == "error"
    for rid in ("req-f1", "req-f2"):
        record = store.get(rid)
        assert record is not None and record.error is not None and record.error.status_code == 500


def test_a_claimed_request_survives_its_worker(settings: Settings) -> None:
    """Claimed by a worker that then dies: the sweep requeues it, and its RQ job is still there to run."""
    pipe = FakePipeline(steps=2)
    runner, store = make_runner(settings, pipe)
    submit(settings, "req-orphan")
    assert store.claim("req-orphan", "dead-worker", settings.queue_normal) == "started"
    assert queued(store, settings.queue_normal) == []
    assert store.claim("req-orphan", "other-worker", settings.queue_normal) == "not_queued"
    store.client.delete(store.keys.lease("req-orphan"))  # the lease of the dead worker runs out

    assert recovery.sweep(store) == {"req-orphan": "requeued"}
    assert queued(store, settings.queue_normal) == ["req-orphan"]
    assert Job.exists("req-orphan", connection=store.client)
    assert store.client.ttl(str(Job.key_for("req-orphan"))) > 0  # the RQ job never outlives records
    assert runner.run("req-orphan") == "ok"


def test_claim_leaves_overdue_and_unqueued_requests_alone(settings: Settings) -> None:
    _, store = make_runner(settings, FakePipeline())
    submit(settings, "req-gone")
    store.client.lrem(Keys.rq_queue(settings.queue_normal), 1, "req-gone")  # popped by another worker
    assert store.claim("req-gone", "w", settings.queue_normal) == "not_queued"
    assert store.get("req-gone").status is RequestStatus.IN_QUEUE  # type: ignore[union-attr]
    submit(settings, "req-late")
    store.client.hset(store.keys.record("req-late"), "deadline", "1")
    assert store.claim("req-late", "w", settings.queue_normal) == "overdue"
    assert queued(store, settings.queue_normal) == ["req-late"]
