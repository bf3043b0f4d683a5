"""What a worker serves: the pipeline interface the real, simulated and test pipelines implement (torch-free).

:class:`Pipeline` is the contract between the model library and the worker: ``generate_batch`` as the
worker calls it, the tokens per decoding step (``parallel_num``, which sizes a request's progress) and
the :class:`ModelIdentity` the worker publishes with its heartbeat (``/health`` shows it per live
worker), so the page and the startup banner can say plainly when images will be noise (the random
tiny checkpoint) or synthetic (a simulated model). ``model.pipeline.BitDancePipeline`` implements it
with torch; ``model.simulated`` and the worker's test fake without. Nothing here imports torch, so the
worker's queue code and the simulated worker import it freely; ``tests/unit/model/test_interface.py``
checks each implementation against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from model.generation_request import GenerationRequest

ProgressCallback = Callable[[int, int], None]
"""``progress(patch, num_patches)`` after each decoded patch (1-based)."""
StopCheck = Callable[[], bool]
"""Checked before each decoding step; ``True`` stops the generation with ``GenerationCancelled``."""


@dataclass(frozen=True)
class ModelIdentity:
    """The loaded model, in words a person and a client can read.

    Attributes:
        name: the checkpoint folder's name (``BitDance-14B-64x``, ``tiny-64x``) or ``simulated``.
        path: the checkpoint directory as given to the worker.
        variant: size and tokens per step: ``14B-64x``, ``tiny-16x``, or ``custom-64x``.
        parallel_num: tokens predicted per decoding step (64 or 16).
        random: True for the tiny checkpoint of ``python -m model.tiny``: its images are noise.
        simulated: True for a simulated model (no BitDance network at all).
    """

    name: str
    path: str
    variant: str
    parallel_num: int
    random: bool = False
    simulated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: ``tiny-64x (random weights) at /path``."""
        if self.simulated:
            kind = "simulated model: synthetic images, no BitDance weights"
        elif self.random:
            kind = "random weights: images are noise"
        else:
            kind = "released weights" if self.variant.startswith("14B") else "custom checkpoint"
        return f"{self.name} ({self.variant}, {kind}) at {self.path}"


@dataclass
class PipelineOutput:
    """What ``generate_batch`` returns: the images of each request, in request order."""

    images: list[list[Image.Image]]


@runtime_checkable
class Pipeline(Protocol):
    """A loaded model the worker can serve: what the worker needs of it, and nothing more."""

    parallel_num: int  # tokens predicted per decoding step (64 or 16)
    identity: ModelIdentity

    # The one statement of the contract (each implementation restates it; test_interface checks they agree).
    def generate_batch(self, requests: Sequence[GenerationRequest], *, height: int, width: int,
                       num_inference_steps: int = 25, progress: ProgressCallback | None = None,
                       should_stop: StopCheck | None = None) -> PipelineOutput:  # fmt: skip
        """Generate several requests of one size and step count together; each gets exactly its own images.

        Reports ``progress`` after each decoding step and checks ``should_stop`` before each; raises
        ``ValueError`` for a size the model does not serve.
        """
        ...
