"""``TaskRunner.run(request_id)``: the whole lifecycle of one request, always ending in ``complete``.

A worker process builds its runner once, on the pipeline it loaded before its work loop (rq's
advice: heavy resources are loaded before the work loop, and in-process jobs keep CUDA state
alive), and hands it to its RQ worker, whose job class runs every request job with it
(``core.requests.rq_integration.request_job_class``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from PIL import Image
from pydantic import ValidationError

from core.errors import (
    ClientCancelledError,
    FalError,
    RequestTimeoutError,
    RunnerServerError,
    StoredError,
)
from core.requests.records import RequestRecord
from core.requests.rq_integration import LOST_OUTCOME
from core.requests.scripts import StartOutcome
from core.requests.worker_store import WorkerRequestStore, new_attempt
from core.schemas import BitDanceInput, BitDanceOutput, ImageFile
from core.settings import Settings
from core.storage import LocalStorage, StoredFile
from model.encoding import data_uri, encode_image
from model.exceptions import GenerationCancelled
from model.generation_request import GenerationRequest
from model.interface import Pipeline
from model.safety import SafetyChecker, redact
from model.seeds import resolve_seed
from worker.batching import BatchMemory, claim_companions
from worker.progress import ProgressTracker
from worker.validation import GenerationShape, validate_input, validation_error

logger = logging.getLogger(__name__)

RECORD_RETRY_S = 60.0
T = TypeVar("T")


@dataclass
class WorkerServices:
    """Everything a task needs, built once per worker process."""

    settings: Settings
    pipe: Pipeline
    request_store: WorkerRequestStore
    storage: LocalStorage
    safety: SafetyChecker
    worker_name: str
    batch_memory: BatchMemory | None = None  # the loaded checkpoint's budget per batch (None: no model memory)


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


@dataclass(eq=False)  # compared by identity: one entry per request of a batch
class BatchEntry:
    """One request of a generation: its validated input, seed and progress tracker."""

    record: RequestRecord
    payload: BitDanceInput
    shape: GenerationShape
    seed: int
    tracker: ProgressTracker
    attempt: str | None = None  # the run's token (None: completions are not tied to a run)

    @property
    def request_id(self) -> str:
        return self.record.request_id

    def as_generation_request(self) -> GenerationRequest:
        p = self.payload
        return GenerationRequest(p.prompt, self.seed, p.guidance_scale, p.num_images)


class TaskRunner:
    """Runs requests on the loaded pipeline; ``current_leases`` are kept leased by the worker.

    Each run of a request has its own attempt token (``new_attempt``), held by its lease: only that run
    renews the lease and completes the request. A run that loses its request (stalled past its lease,
    requeued and taken by another worker) stops at its next patch and discards what it made, files
    included (``lose``, from the heartbeat; or a refused completion).
    """

    def __init__(self, services: WorkerServices) -> None:
        self.services = services
        self.current_leases: tuple[tuple[str, str], ...] = ()  # (request id, attempt) being run
        self.lost: set[tuple[str, str]] = set()  # (request id, attempt) whose lease renewal was refused
        self.last_outcome: tuple[str, str] | None = None  # (request id, outcome) of the last run

    def lose(self, request_id: str, attempt: str) -> None:
        """The heartbeat's word that this run no longer holds ``request_id`` (each beat, until the run ends)."""
        if (request_id, attempt) in self.lost:
            return
        logger.warning("lease lost request_id=%s attempt=%s: stopping, its outputs are discarded", request_id, attempt)
        self.lost.add((request_id, attempt))

    def is_lost(self, entry: BatchEntry) -> bool:
        return entry.attempt is not None and (entry.request_id, entry.attempt) in self.lost

    @property
    def store(self) -> WorkerRequestStore:
        return self.services.request_store

    def run(self, request_id: str) -> str:
        """Start, execute and complete one request (and any companions batched with it).

        Returns this request's outcome, for logs and tests.
        """
        outcome = self._run(request_id)
        self.last_outcome = (request_id, outcome)
        if outcome != "ok":
            logger.info("request_id=%s ended: %s", request_id, outcome)
        return outcome

    def _run(self, request_id: str) -> str:
        name = self.services.worker_name
        attempt = new_attempt(name)
        started = with_redis_retry(lambda: self.store.start(request_id, name, attempt), "start")
        if started is StartOutcome.OVERDUE:
            self._complete_error(request_id, RequestTimeoutError().to_stored())
            return "request_timeout"
        if started is not StartOutcome.STARTED:
            logger.info("skipping request request_id=%s (%s)", request_id, started)
            return started.value
        record = self.store.get(request_id)
        if record is None:  # expired between the two calls
            return StartOutcome.MISSING.value
        batch = [record]
        self.current_leases = ((request_id, attempt),)
        try:
            max_images = self.services.settings.max_batch_images
            if max_images > 1:
                pipe = self.services.pipe
                memory = self.services.batch_memory
                batch += claim_companions(self.store, name, record, pipe.parallel_num, max_images, memory, attempt)
                self.current_leases = tuple((r.request_id, attempt) for r in batch)
            outcomes = self.execute(batch, attempt)
        finally:
            if self.services.settings.max_running_per_key > 0:  # their keys' waiting requests may run now
                owners = {r.owner for r in batch}
                try:
                    with_redis_retry(lambda: self.store.release_deferred(owners), "release deferred")
                except redis.RedisError as exc:  # the sweep releases them instead
                    logger.warning("could not release deferred requests: %s", exc)
            self.current_leases = ()
            self.lost -= {(r.request_id, attempt) for r in batch}
        return outcomes[request_id]

    def execute(self, records: Sequence[RequestRecord], attempt: str | None = None) -> dict[str, str]:
        """Generate, screen, encode and store; every request gets an outcome recorded."""
        outcomes: dict[str, str] = {}
        entries = []
        for record in records:
            entry = self._prepare(record, outcomes, attempt)
            if entry is not None:
                entries.append(entry)
        if not entries:
            return outcomes
        pipe = self.services.pipe
        shape = entries[0].shape  # batch companions were claimed for having the same
        height, width = shape.height, shape.width
        running = list(entries)
        note = f" (batch of {len(entries)} requests)" if len(entries) > 1 else ""
        for entry in entries:
            n, seed = entry.payload.num_images, entry.seed
            entry.tracker.log(f"Generating {n} image(s) of {width}x{height}, seed {seed}{note}")

        def progress(patch: int, num_patches: int) -> None:
            for entry in running:
                entry.tracker.on_patch(patch, num_patches)

        def should_stop() -> bool:
            for entry in list(running):
                if self.is_lost(entry):
                    outcomes[entry.request_id] = LOST_OUTCOME  # another run holds it now: nothing to record
                    running.remove(entry)
                elif entry.tracker.should_stop():
                    logger.info("cancelled while running request_id=%s", entry.request_id)
                    self._complete_error(entry.request_id, ClientCancelledError().to_stored(), entry.attempt)
                    outcomes[entry.request_id] = "client_cancelled"
                    running.remove(entry)
            return not running

        started = time.perf_counter()
        try:
            requests = [entry.as_generation_request() for entry in entries]
            output = pipe.generate_batch(
                requests,
                height=height,
                width=width,
                num_inference_steps=shape.num_inference_steps,
                progress=progress,
                should_stop=should_stop,
            )
        except GenerationCancelled:
            return outcomes  # every request of the batch was cancelled and recorded (or lost)
        except Exception as exc:  # task boundary: the broad catch exists to record the outcomes
            logger.exception("generation failed request_ids=%s", [e.request_id for e in running])
            for entry in running:
                self._complete_error(entry.request_id, public_error(exc).to_stored(), attempt)
                outcomes[entry.request_id] = "error"
            return outcomes
        inference_s = time.perf_counter() - started
        for entry, request_images in zip(entries, output.images, strict=True):
            if entry in running:
                outcomes[entry.request_id] = self._finish(entry, request_images, inference_s)
        return outcomes

    def _prepare(self, record: RequestRecord, outcomes: dict[str, str], attempt: str | None) -> BatchEntry | None:
        """Validate a request's input and pick its seed; an invalid one is completed with a 422."""
        try:
            validated = validate_input(record.input, self.services.pipe.parallel_num)
        except ValidationError as exc:
            self._complete_error(record.request_id, validation_error(exc), attempt)
            outcomes[record.request_id] = "validation_error"
            return None
        except Exception as exc:  # task boundary: e.g. a size the checkpoint cannot make
            self._complete_error(record.request_id, public_error(exc).to_stored(), attempt)
            outcomes[record.request_id] = "error"
            return None
        seed = resolve_seed(validated.payload.seed)
        interval_s = self.services.settings.progress_interval_s
        tracker = ProgressTracker(self.store, record.request_id, validated.payload.num_inference_steps, interval_s)
        entry = BatchEntry(record, validated.payload, validated.shape, seed, tracker, attempt)
        tracker.is_lost = lambda: self.is_lost(entry)
        return entry

    def _finish(self, entry: BatchEntry, images: Sequence[Image.Image], inference_s: float) -> str:
        rid = entry.request_id
        stored: list[StoredFile] = []
        try:
            output = self.build_output(entry.record, entry.payload, images, entry.seed, stored)
        except Exception as exc:  # task boundary: storage or encoding failures become the outcome
            logger.exception("output failed request_id=%s", rid)
            self._discard(stored)
            self._complete_error(rid, public_error(exc).to_stored(), entry.attempt)
            return "error"
        attempt = entry.attempt
        if self.is_lost(entry) or (attempt is not None and not self._holds(rid, attempt)):
            self._discard(stored)  # a stalled run, requeued meanwhile: another run reports this request
            return LOST_OUTCOME
        count = len(output["images"])
        entry.tracker.log(f"Done: {count} image(s) ready (generated in {inference_s:.2f}s)")
        completed = with_redis_retry(lambda: self.store.complete_ok(rid, output, inference_s, attempt), "complete")
        if not completed:  # another run holds it, or it ended meanwhile: this run's result is nobody's
            logger.warning("result discarded request_id=%s: this run no longer holds it", rid)
            self._discard(stored)
            return LOST_OUTCOME
        with_redis_retry(lambda: self.store.record_inference(inference_s, len(images)), "metrics")
        return "ok"

    def _holds(self, rid: str, attempt: str) -> bool:
        return with_redis_retry(lambda: self.store.holds(rid, attempt), "ownership check")

    def _discard(self, stored: Sequence[StoredFile]) -> None:
        for file in stored:
            self.services.storage.delete(file.token)

    def build_output(
        self,
        record: RequestRecord,
        payload: BitDanceInput,
        images: Sequence[Image.Image],
        seed: int,
        stored: list[StoredFile] | None = None,
    ) -> dict[str, Any]:
        """Safety check, encode and store (or inline with sync_mode); the output JSON."""
        if payload.enable_safety_checker:
            flags = self.services.safety.check(images)
            images = redact(images, flags)
        else:
            flags = [False] * len(images)
        files = [self.store_image(record, payload, image, i, stored) for i, image in enumerate(images)]
        output = BitDanceOutput(images=files, seed=seed, has_nsfw_concepts=flags, prompt=payload.prompt)
        return output.model_dump(mode="json")

    def store_image(
        self,
        record: RequestRecord,
        payload: BitDanceInput,
        image: Image.Image,
        index: int,
        stored_files: list[StoredFile] | None = None,
    ) -> ImageFile:
        """One image as an output file (stored, and noted in ``stored_files``, unless ``sync_mode``)."""
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
            if stored_files is not None:
                stored_files.append(stored)
            url = record.files_base + stored.url_path
        return ImageFile(
            url=url,
            content_type=encoded.content_type,
            file_name=file_name,
            file_size=len(encoded.data),
            width=encoded.width,
            height=encoded.height,
        )

    def _complete_error(self, rid: str, error: StoredError, attempt: str | None = None) -> None:
        with_redis_retry(lambda: self.store.complete_error(rid, error, attempt=attempt), "complete")


def public_error(exc: Exception) -> FalError:
    """What a user may see of an unexpected failure (no internals)."""
    if isinstance(exc, FalError):
        return exc
    if isinstance(exc, ValueError):
        return RunnerServerError(f"Generation failed: {exc}")
    return RunnerServerError(f"Generation failed ({type(exc).__name__})")
