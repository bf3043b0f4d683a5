"""``run_request(request_id)``: the whole lifecycle of one request, always ending in ``complete``.

RQ imports this module by name and calls ``run_request``; the worker process binds its loaded
pipeline and services once with ``bind_runner`` before it starts working (rq's advice: heavy
resources are loaded before the work loop, and in-process jobs keep CUDA state alive).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis
from PIL import Image
from pydantic import ValidationError

from model.errors import GenerationCancelled
from model.resolutions import resolve_image_size
from server.errors import (
    ClientCancelledError,
    FalError,
    RequestTimeoutError,
    RunnerServerError,
    StoredError,
)
from server.jobs import RequestRecord, WorkerJobStore
from server.schemas import BitDanceInput, BitDanceOutput, ImageFile
from server.settings import Settings
from server.storage import LocalStorage
from server.webhooks import WebhookSender, webhook_body
from worker.encoding import data_uri, encode_image
from worker.progress import ProgressTracker
from worker.safety import SafetyChecker, redact

logger = logging.getLogger(__name__)

SEED_RANGE = 2**31
RECORD_RETRY_S = 60.0
T = TypeVar("T")


class Pipeline(Protocol):
    """What the worker needs from ``model.pipeline.BitDancePipeline``."""

    parallel_num: int

    def generate(
        self,
        prompt: str,
        height: int,
        width: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        num_images: int = 1,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]: ...


@dataclass
class WorkerServices:
    """Everything a task needs, built once per worker process."""

    settings: Settings
    pipe: Pipeline
    jobs: WorkerJobStore
    storage: LocalStorage
    safety: SafetyChecker
    webhooks: WebhookSender
    worker_name: str


def with_redis_retry(action: Callable[[], T], what: str, budget_s: float = RECORD_RETRY_S) -> T:
    """Retry ``action`` on Redis connection errors (e.g. Redis restarting) for up to ``budget_s``."""
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("%s: redis unavailable (%s), retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class TaskRunner:
    """Runs requests on the loaded pipeline; ``current_request`` is kept leased by the worker."""

    def __init__(self, services: WorkerServices) -> None:
        self.services = services
        self.current_request: str | None = None

    @property
    def jobs(self) -> WorkerJobStore:
        return self.services.jobs

    def run(self, request_id: str) -> str:
        """Start, execute and complete one request; returns a short outcome for logs and tests."""
        name = self.services.worker_name
        started = with_redis_retry(lambda: self.jobs.start(request_id, name), "start")
        if started == "overdue":
            self._complete_error(request_id, RequestTimeoutError().to_stored())
            self.notify(request_id)
            return "request_timeout"
        if started != "started":
            logger.info("skipping request request_id=%s (%s)", request_id, started)
            return started
        record = self.jobs.get(request_id)
        if record is None:  # expired between the two calls
            return "missing"
        self.current_request = request_id
        try:
            outcome = self.execute(record)
        finally:
            self.current_request = None
        self.notify(request_id)
        return outcome

    def execute(self, record: RequestRecord) -> str:
        """Generate, screen, encode and store; every path records an outcome."""
        rid = record.request_id
        tracker = ProgressTracker(self.jobs, rid, self.services.settings.progress_interval_s)
        try:
            payload = BitDanceInput.model_validate(record.input)
            height, width = resolve_image_size(payload.image_size_value(), self.services.pipe.parallel_num)
            seed = payload.seed if payload.seed is not None else secrets.randbelow(SEED_RANGE)
            tracker.log(f"Generating {payload.num_images} image(s) of {width}x{height}, seed {seed}")
            started = time.perf_counter()
            images = self.services.pipe.generate(
                payload.prompt,
                height,
                width,
                num_inference_steps=payload.num_inference_steps,
                guidance_scale=payload.guidance_scale,
                seed=seed,
                num_images=payload.num_images,
                progress=tracker.on_step,
                should_stop=tracker.should_stop,
            )
            inference_s = time.perf_counter() - started
            output = self.build_output(record, payload, images, seed)
        except GenerationCancelled:
            logger.info("cancelled while running request_id=%s", rid)
            self._complete_error(rid, ClientCancelledError().to_stored())
            return "client_cancelled"
        except ValidationError as exc:
            detail = exc.errors(include_url=False, include_context=False, include_input=False)
            body = {"detail": [{**e, "loc": ["body", *e["loc"]]} for e in detail]}
            self._complete_error(rid, StoredError(422, body))
            return "validation_error"
        except Exception as exc:  # task boundary: the broad catch exists to record the outcome
            logger.exception("generation failed request_id=%s", rid)
            self._complete_error(rid, public_error(exc).to_stored())
            return "error"
        tracker.log(f"Done in {inference_s:.2f}s")
        with_redis_retry(lambda: self.jobs.complete_ok(rid, output, inference_s), "complete")
        with_redis_retry(lambda: self.jobs.record_inference_seconds(inference_s), "metrics")
        return "ok"

    def build_output(
        self, record: RequestRecord, payload: BitDanceInput, images: Sequence[Image.Image], seed: int
    ) -> dict[str, Any]:
        """Safety check, encode and store (or inline with sync_mode); the output JSON."""
        if payload.enable_safety_checker:
            flags = self.services.safety.check(images)
            images = redact(images, flags)
        else:
            flags = [False] * len(images)
        files = [self.store_image(record, payload, image, i) for i, image in enumerate(images)]
        output = BitDanceOutput(images=files, seed=seed, has_nsfw_concepts=flags, prompt=payload.prompt)
        return output.model_dump(mode="json")

    def store_image(self, record: RequestRecord, payload: BitDanceInput, image: Image.Image, index: int) -> ImageFile:
        settings = self.services.settings
        encoded = encode_image(image, payload.output_format, settings.jpeg_quality)
        file_name = f"{record.request_id[:8]}-{index}.{encoded.extension}"
        if payload.sync_mode:
            url = data_uri(encoded)
        else:
            stored = self.services.storage.put_bytes(
                encoded.data,
                file_name=file_name,
                content_type=encoded.content_type,
                owner=record.owner,
                ttl_s=record.file_ttl_s,
            )
            url = record.files_base + stored.url_path
        return ImageFile(
            url=url,
            content_type=encoded.content_type,
            file_name=file_name,
            file_size=len(encoded.data),
            width=encoded.width,
            height=encoded.height,
        )

    def _complete_error(self, rid: str, error: StoredError) -> None:
        with_redis_retry(lambda: self.jobs.complete_error(rid, error), "complete")

    def notify(self, request_id: str) -> None:
        """Deliver the webhook of a COMPLETED request in the background (never changes the outcome)."""
        try:
            record = self.jobs.get(request_id)
        except redis.RedisError:
            logger.exception("webhook skipped, record unreadable request_id=%s", request_id)
            return
        if record is None or record.webhook is None:
            return
        body = webhook_body(record)
        self.services.webhooks.deliver_in_background(record.webhook, body, request_id, self._record_webhook)

    def _record_webhook(self, request_id: str, delivered: bool, attempts: int) -> None:
        key = self.jobs.keys.record(request_id)
        state = "delivered" if delivered else "failed"
        self.jobs.client.hset(key, mapping={"webhook_status": state, "webhook_attempts": attempts})


def public_error(exc: Exception) -> FalError:
    """What a user may see of an unexpected failure (no internals)."""
    if isinstance(exc, FalError):
        return exc
    if isinstance(exc, ValueError):
        return RunnerServerError(f"Generation failed: {exc}")
    return RunnerServerError(f"Generation failed ({type(exc).__name__})")


_runner: TaskRunner | None = None


def bind_runner(runner: TaskRunner | None) -> None:
    """Bind the process's runner (done once by ``worker.__main__`` before working)."""
    global _runner
    _runner = runner


def run_request(request_id: str) -> str:
    """The RQ job function: ``worker.tasks.run_request(request_id)``."""
    if _runner is None:
        raise RuntimeError("no TaskRunner bound in this process: start workers with `python -m worker`")
    return _runner.run(request_id)
