"""The jobs on our RQ queues, run by a real ``GpuWorker`` (burst mode) on a real Redis.

Every job carries the function name ``worker.tasks.run_request``: the jobs that earlier versions
enqueued (still in users' Redis) and the ones this version enqueues alike, so that workers of
either version run them during a rolling upgrade. No such function exists any more: the worker's
job class resolves the name to the runner the worker was built with, and refuses any other name
without importing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from core.protocol import RequestStatus
from core.requests.api_store import create_request
from core.requests.records import Keys, NewRequest
from core.requests.rq_integration import TASK_FUNCTION
from core.settings import Settings
from core.webhooks.outbox import build_outbox
from worker.gpu_worker import GpuWorker

from .fakes import FakePipeline
from .test_tasks import make_runner

LEGACY_FUNCTION = "worker.tasks.run_request"  # what every job written before this version names
called: list[str] = []


def record_call(request_id: str) -> str:
    """What a job naming this module's function would run, if a worker imported it."""
    called.append(request_id)
    return "ran"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(progress_interval_s=0.0)


def enqueue_with_function(settings: Settings, rid: str, function: str) -> None:
    """A request's record as submit writes it, and its RQ job written by RQ itself, naming ``function``."""
    conn = redis.Redis.from_url(settings.redis_url)
    payload = {"prompt": "a harbour at dusk", "image_size": "square", "num_inference_steps": 10}
    create_request(conn, settings, NewRequest(rid, "owner-1", settings.endpoint_id, payload, "normal", "http://f"))
    conn.delete(Job.key_for(rid), Keys.rq_queue(settings.queue_normal))  # replaced by the job below
    Queue(settings.queue_normal, connection=conn).enqueue_call(
        function, args=(rid,), job_id=rid, timeout=settings.job_timeout_s, result_ttl=0
    )


def work_once(settings: Settings) -> None:
    """A ``GpuWorker`` as ``python -m worker`` builds it, serving the queues until they are empty."""
    runner, store = make_runner(settings, FakePipeline(steps=2))
    conn = redis.Redis.from_url(settings.redis_url)
    queues = [settings.queue_normal, settings.queue_low]
    outbox = build_outbox(store.client, settings)
    worker = GpuWorker(queues, runner=runner, store=store, outbox=outbox, name="rq-jobs-worker", connection=conn)
    worker.work(burst=True)


def test_a_job_enqueued_by_an_earlier_version_still_runs(settings: Settings) -> None:
    assert TASK_FUNCTION == LEGACY_FUNCTION  # what this version enqueues, so older workers run it too
    assert not hasattr(importlib.import_module("worker.tasks"), "run_request")  # nothing imports the name
    enqueue_with_function(settings, "req-legacy", LEGACY_FUNCTION)
    conn = redis.Redis.from_url(settings.redis_url)
    assert Job.fetch("req-legacy", connection=conn).func_name == LEGACY_FUNCTION
    work_once(settings)
    store = make_runner(settings, FakePipeline())[1]
    record = store.get("req-legacy")
    assert record is not None and record.status is RequestStatus.COMPLETED
    assert record.error is None and record.result is not None and len(record.result["images"]) == 1


def test_a_job_naming_any_other_function_is_refused_unimported(settings: Settings) -> None:
    called.clear()
    enqueue_with_function(settings, "req-foreign", f"{__name__}.record_call")
    work_once(settings)
    assert called == []  # RQ would have imported and called it
    conn = redis.Redis.from_url(settings.redis_url)
    job = Job.fetch("req-foreign", connection=conn)
    assert job.get_status() is JobStatus.FAILED
    assert "NotARequestJobError" in str(job.latest_result().exc_string)  # type: ignore[union-attr]
    record = make_runner(settings, FakePipeline())[1].get("req-foreign")
    assert record is not None and record.status is RequestStatus.IN_QUEUE  # never started
