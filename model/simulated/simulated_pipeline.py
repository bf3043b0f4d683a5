"""``SimulatedPipeline``: ``generate_batch`` as the worker calls it, timed by a latency profile.

It reports progress once per decoding step and checks ``should_stop`` before each step exactly as
``model.pipeline.BitDancePipeline`` does, so the task runner's logs, cancellation and outcomes are
the real ones. With ``failure_rate`` a generation fails part-way with ``SimulatedFailure``, which
the task runner records like any failed generation (500 ``runner_server_error``).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from PIL import Image

from model.encoding import ENCODINGS_INFO_KEY
from model.exceptions import GenerationCancelled
from model.generation_request import GenerationRequest
from model.interface import ModelIdentity, PipelineOutput, ProgressCallback, StopCheck
from model.resolutions import check_supported_size
from model.seeds import resolve_seed
from model.simulated.picture import render_picture
from model.simulated.profile import LatencyProfile, load_profile

NSFW_WORD = "nsfw"  # a prompt containing it gets images the simulated safety checker flags
NSFW_INFO_KEY = "simulated_nsfw"
SIMULATED_PATH = "simulated"  # what BITDANCE_MODEL_PATH names it by
# The cancel flag is read before a step at most this often: with a GPU's ~0.2 s steps that is every
# step, as the real pipeline does; with a fast profile's short steps it spares Redis a read per step.
STOP_CHECK_S = 0.05
# The wait wakes at most this often (or once per step, if steps are longer) and reports the steps that
# ended meanwhile, so that an emulated GPU costs Redis what a real one does: the real 64x model's steps
# take ~0.19 s (12 s / 64), while a fast profile's (flat-2s: 31 ms) made 300 slots wake ~10,000 times a
# second, each wake a cancel read or a progress log (issue 21).
TICK_S = 0.2
ENCODINGS_KEPT = 256  # pictures whose encoded bytes are kept (a few hundred KB each)


class SimulatedFailure(RuntimeError):
    """The injected failure of a simulated generation."""


class SimulatedPipeline:
    """Stands in for ``BitDancePipeline`` (a :class:`model.interface.Pipeline`); safe to share between threads."""

    def __init__(
        self,
        profile: LatencyProfile,
        speed: float = 1.0,
        failure_rate: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.speed = speed
        self.failure_rate = failure_rate
        self.parallel_num = profile.parallel_num
        # Named by its latency profile: /health and the startup banner say the images are synthetic.
        self.identity = ModelIdentity(
            f"simulated ({profile.name})", SIMULATED_PATH, profile.variant, profile.parallel_num, simulated=True
        )
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random()
        # Same picture, same bytes: each picture's encodings, shared by every request that draws it again
        # (``model.encoding.encode_image`` fills and reads them), so a fleet's worth of requests with
        # repeated inputs does not encode the same JPEG 150 times a second in one process.
        self._encodings: OrderedDict[tuple[str, int, int, int, int], dict[tuple[str, int | None], bytes]] = (
            OrderedDict()
        )
        self._encodings_lock = threading.Lock()

    @classmethod
    def from_settings(cls, profile: str, speed: float = 1.0, failure_rate: float = 0.0) -> SimulatedPipeline:
        return cls(load_profile(profile), speed=speed, failure_rate=failure_rate)

    def describe(self) -> str:
        return f"simulated ({self.profile.name}, {self.profile.variant}, speed {self.speed:g})"

    def service_seconds(self, requests: Sequence[GenerationRequest], height: int, width: int, steps: int) -> float:
        guided = any(r.guidance_scale > 1.0 for r in requests)
        images = sum(r.num_images for r in requests)
        return self.profile.service_seconds(height, width, steps, guided, images, self.speed, self._rng)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        height: int,
        width: int,
        num_inference_steps: int = 25,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> PipelineOutput:
        """Draw each request's pictures, then wait out the rest of the profile's time step by step."""
        if not requests:
            raise ValueError("at least one request is needed")
        check_supported_size(height, width, self.parallel_num)
        total_steps = self.profile.decoding_steps(height, width)
        duration = self.service_seconds(requests, height, width, num_inference_steps)
        fail_at = self._failure_step(total_steps)
        started = self._clock()
        # Drawn first, inside the simulated time: the real model's time includes its decoder too.
        pictures = [self._pictures(request, height, width) for request in requests]
        step_s = duration / total_steps
        done = 0  # decoding steps reported so far
        last_stop_check: float | None = None
        while done < total_steps:
            now = self._clock()
            if should_stop is not None and (last_stop_check is None or now - last_stop_check >= STOP_CHECK_S):
                last_stop_check = now
                if should_stop():
                    raise GenerationCancelled(f"stopped before decoding step {done + 1} of {total_steps}")
            # Wake once per TICK_S (or per step, if longer), then report every step that ended meanwhile.
            ahead = math.ceil((now - started + TICK_S) / step_s) if step_s > 0 else total_steps
            target = min(total_steps, max(done + 1, ahead))
            if fail_at is not None and fail_at < target:
                target = fail_at
            remaining = started + step_s * target - self._clock()
            if remaining > 0:
                self._sleep(remaining)
            if progress is not None:
                for patch in range(done + 1, target + 1):
                    progress(patch, total_steps)
            done = target
            if done == fail_at:
                raise SimulatedFailure(f"simulated failure at decoding step {done + 1} of {total_steps}")
        return PipelineOutput(pictures)

    def _picture_encodings(self, key: tuple[str, int, int, int, int]) -> dict[tuple[str, int | None], bytes]:
        with self._encodings_lock:
            entry = self._encodings.pop(key, None)
            self._encodings[key] = entry = {} if entry is None else entry
            while len(self._encodings) > ENCODINGS_KEPT:
                self._encodings.popitem(last=False)
            return entry

    def _failure_step(self, total_steps: int) -> int | None:
        if self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            return self._rng.randrange(total_steps)
        return None

    def _pictures(self, request: GenerationRequest, height: int, width: int) -> list[Image.Image]:
        seed = resolve_seed(request.seed)
        flagged = NSFW_WORD in request.prompt.lower()
        images = []
        for index in range(request.num_images):
            image = render_picture(request.prompt, seed, index, width, height)
            image.info[NSFW_INFO_KEY] = flagged
            image.info[ENCODINGS_INFO_KEY] = self._picture_encodings((request.prompt, seed, index, width, height))
            images.append(image)
        return images
