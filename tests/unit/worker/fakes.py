"""A fake pipeline for worker unit tests (cog's FakeWorker idea): scripted steps, failures, cancels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from model.exceptions import GenerationCancelled
from model.generation_request import GenerationRequest
from model.interface import ModelIdentity, PipelineOutput, ProgressCallback, StopCheck


@dataclass
class FakePipeline:
    """A :class:`model.interface.Pipeline`: deterministic images from (prompt, seed); ``fail_at_step``
    raises, ``on_step`` hooks each step."""

    parallel_num: int = 16
    identity: ModelIdentity = field(default_factory=lambda: ModelIdentity("fake", "", "custom-16x", 16))
    steps: int = 4
    fail_at_step: int | None = None
    on_step: Callable[[int], None] | None = None
    calls: list[dict[str, object]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # requests per generate_batch call

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
        self.batches.append(len(requests))
        for r in requests:
            self.calls.append({"prompt": r.prompt, "height": height, "width": width, "seed": r.seed, "n": r.num_images})
        for step in range(1, self.steps + 1):
            if should_stop is not None and should_stop():
                raise GenerationCancelled()
            if self.on_step is not None:
                self.on_step(step)
            if self.fail_at_step == step:
                raise RuntimeError(f"boom at step {step}")
            if progress is not None:
                progress(step, self.steps)
        return PipelineOutput([self.images(r.prompt, r.seed, r.num_images, width, height) for r in requests])

    @staticmethod
    def images(prompt: str, seed: int | None, count: int, width: int, height: int) -> list[Image.Image]:
        shade = (hash((prompt, seed)) % 200) + 20
        return [Image.new("RGB", (width, height), (shade, (shade + i * 40) % 255, 90)) for i in range(count)]


class FlagAll:
    """A safety checker flagging every image."""

    def check(self, images: list[Image.Image]) -> list[bool]:
        return [True] * len(images)
