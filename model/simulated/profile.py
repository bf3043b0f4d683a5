"""Latency profiles: how long the real model would take on a GPU for a given request.

A profile gives seconds per decoding step (one patch of ``parallel_num`` tokens) for each
checkpoint variant, as ``base_s + per_inference_step_s * num_inference_steps``, scaled for
guidance off and for extra images, plus a fixed part per generation and a relative jitter::

    total = fixed_s + decoding_steps * step_s * guidance * images,   then * (1 + N(0, jitter)) / speed
    decoding_steps = height * width / 16**2 / parallel_num             (1024x1024 on 64x: 64 steps)

``BITDANCE_SIMULATED_PROFILE`` names a built-in profile (``BUILT_IN``) or a JSON file with the same
keys (``source`` says where the numbers come from); ``BITDANCE_SIMULATED_SPEED`` divides every time.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN_PIXELS = 16  # the autoencoder's downsampling: one binary token per 16x16 pixels
VARIANTS = {"64x": 64, "16x": 16}


@dataclass(frozen=True)
class StepCost:
    """Seconds per decoding step: ``base_s + per_inference_step_s * num_inference_steps``."""

    base_s: float = 0.0
    per_inference_step_s: float = 0.0

    def seconds(self, num_inference_steps: int) -> float:
        return self.base_s + self.per_inference_step_s * num_inference_steps


@dataclass(frozen=True)
class LatencyProfile:
    """Where the simulated time comes from, and how it depends on the request."""

    name: str
    source: str
    variant: str = "64x"  # the checkpoint the simulated worker pretends to serve (its sizes)
    step_cost: dict[str, StepCost] = field(default_factory=dict)
    fixed_s: float = 0.0  # per generation: prompt prefill, decoder, safety checker
    guidance_off_factor: float = 1.0  # guidance_scale <= 1 runs one branch instead of two
    extra_image_factor: float = 0.0  # each image beyond the first adds this share of one image
    jitter: float = 0.0  # relative standard deviation of the total

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"profile {self.name!r}: variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.variant not in self.step_cost and self.fixed_s <= 0:
            raise ValueError(f"profile {self.name!r} has no step_cost for variant {self.variant!r}")

    @property
    def parallel_num(self) -> int:
        return VARIANTS[self.variant]

    def decoding_steps(self, height: int, width: int) -> int:
        return max(1, height * width // (TOKEN_PIXELS * TOKEN_PIXELS) // self.parallel_num)

    def service_seconds(
        self,
        height: int,
        width: int,
        num_inference_steps: int,
        guided: bool,
        num_images: int,
        speed: float = 1.0,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds one generation takes (all its images together), jitter included."""
        cost = self.step_cost.get(self.variant, StepCost())
        step_s = cost.seconds(num_inference_steps)
        step_s *= 1.0 if guided else self.guidance_off_factor
        step_s *= 1.0 + self.extra_image_factor * max(num_images - 1, 0)
        total = self.fixed_s + self.decoding_steps(height, width) * step_s
        if self.jitter > 0:
            total *= max(0.0, 1.0 + (rng or random).gauss(0.0, self.jitter))
        return total / speed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyProfile:
        known = {"name", "source", "variant", "step_cost", "fixed_s", "guidance_off_factor",
                 "extra_image_factor", "jitter"}  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)} (known: {sorted(known)})")
        if not str(data.get("source", "")).strip():
            raise ValueError("a profile states where its numbers come from: 'source' is required")
        values = dict(data)
        values["step_cost"] = {k: StepCost(**v) for k, v in data.get("step_cost", {}).items()}
        return cls(**values)


# BitDance-14B-64x: ~12 s per 1024x1024 image at 50 steps with guidance (the upstream README's speed
# figure, as read in issue 10), i.e. 12 / 64 decoding steps = 0.1875 s per step, scaled linearly by
# num_inference_steps: 0.00375 s per sampler step per decoding step. BitDance-14B-16x: the upstream
# README says 64x is "approximately a 3x inference speedup" over 16x at 1024px, so 36 s over 256 steps.
UPSTREAM_README = LatencyProfile(
    name="upstream-readme",
    source=(
        "BitDance-14B-64x: ~12 s per 1024x1024 image at 50 steps, guidance 7.5, one GPU (upstream README's "
        "speed figure), scaled linearly by num_inference_steps; 16x: 3x slower per image at 1024px (upstream "
        "README: 64x is ~3x faster). Guidance off 0.6x and +0.25x per extra image are assumptions (one branch "
        "instead of two; batched rows on a GPU), not measurements. To be replaced by our own GPU measurements."
    ),
    variant="64x",
    step_cost={
        "64x": StepCost(per_inference_step_s=12.0 / 64 / 50),
        "16x": StepCost(per_inference_step_s=36.0 / 256 / 50),
    },
    guidance_off_factor=0.6,
    extra_image_factor=0.25,
    jitter=0.05,
)

# Every request takes 2 s whatever its size, steps or images: for measuring the queue itself
# (the goals benchmark of issue 10), where service time must be known exactly.
FLAT_2S = LatencyProfile(
    name="flat-2s",
    source="A constant 2.0 s per request, no jitter: a synthetic profile for measuring the queue's own overhead.",
    variant="64x",
    fixed_s=2.0,
)

BUILT_IN: dict[str, LatencyProfile] = {p.name: p for p in (UPSTREAM_README, FLAT_2S)}


def load_profile(name_or_path: str | Path) -> LatencyProfile:
    """A built-in profile by name, or a JSON file with ``LatencyProfile``'s keys."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown simulated profile {str(name_or_path)!r}: not one of {sorted(BUILT_IN)} nor a file")
    data = json.loads(path.read_text())
    data.setdefault("name", path.stem)
    return LatencyProfile.from_dict(data)
