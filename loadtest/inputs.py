"""What the kit sends: a JSONL file of inputs, or a built-in mix of sizes, steps and prompts."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

PROMPTS = (
    "a lighthouse at dusk, waves breaking on the rocks",
    "a red fox in the snow, telephoto, soft light",
    "an isometric city block at night, neon signs",
    "a bowl of ramen on a wooden table, steam rising",
    "a watercolour map of an imaginary island",
    "a robot tending a vegetable garden, morning mist",
    "portrait of an old sailor, dramatic lighting",
    "a glass teapot with blooming tea, macro photo",
)

# (weight, image_size, num_inference_steps, num_images): mostly the default 1024 square at 25 steps
SHAPES: tuple[tuple[int, str, int, int], ...] = (
    (5, "square_hd", 25, 1),
    (2, "landscape_4_3", 25, 1),
    (2, "portrait_16_9", 25, 1),
    (1, "square_hd", 50, 1),
    (1, "square_hd", 25, 2),
)


def builtin_mix(count: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` inputs drawn (reproducibly) from the weighted shapes and prompts above."""
    rng = random.Random(seed)
    weights = [s[0] for s in SHAPES]
    out = []
    for i in range(count):
        _, size, steps, images = rng.choices(SHAPES, weights)[0]
        out.append(
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "image_size": size,
                "num_inference_steps": steps,
                "num_images": images,
                "seed": rng.randrange(2**31),
            }
        )
    return out


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object (a fal input) per non-empty line."""
    inputs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object (a fal input)")
        inputs.append(value)
    if not inputs:
        raise ValueError(f"{path}: no inputs")
    return inputs


def cycle(inputs: list[dict[str, Any]], offset: int = 0) -> itertools.cycle[dict[str, Any]]:
    """The inputs in order, forever, starting at ``offset`` (so users do not all send the same one)."""
    start = offset % len(inputs)
    return itertools.cycle(inputs[start:] + inputs[:start])
