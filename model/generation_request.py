"""One request's share of a batched generation (torch-free, so the worker's queue code can build it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's share of a batch: its own seed, guidance scale and image count."""

    prompt: str
    seed: int | None = None
    guidance_scale: float = 7.5
    num_images: int = 1
