"""What a worker has loaded, as the API reports it: ``ModelIdentity`` (torch-free).

A pipeline carries one as its ``identity`` attribute; the worker publishes ``identity.as_dict()``
with its heartbeat and ``/health`` shows it per live worker. Any pipeline the worker can serve
(the real one, a simulated one) provides its own, so the page and the startup banner can say
plainly when images will be noise (the random tiny checkpoint) or synthetic (a simulated model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.checkpoint.layout import is_random_tiny

# Qwen3-14B, the LLM of the released BitDance-14B checkpoints.
HIDDEN_SIZE_14B, LAYERS_14B = 5120, 40


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


def identify_checkpoint(path: str | Path, parallel_num: int, hidden_size: int, num_layers: int) -> ModelIdentity:
    """The identity of a loaded native checkpoint (its LLM size tells the released 14B apart)."""
    random = is_random_tiny(path)
    if random:
        size = "tiny"
    elif (hidden_size, num_layers) == (HIDDEN_SIZE_14B, LAYERS_14B):
        size = "14B"
    else:
        size = "custom"
    resolved = Path(path).resolve()
    return ModelIdentity(resolved.name, str(resolved), f"{size}-{parallel_num}x", parallel_num, random=random)
