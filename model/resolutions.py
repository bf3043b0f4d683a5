"""Supported output sizes of the official pipeline and snapping of requested sizes onto them.

Sizes are ``(height, width)`` pairs, as in the official ``IMAGE_SIZE_LIST``. This module imports no
torch so that light callers (the worker's request parsing) can use it.
"""

from __future__ import annotations

import math

# The official table, (height, width). The 1024-px area is served by both checkpoints.
SIZES_1024_AREA: tuple[tuple[int, int], ...] = (
    (2048, 512),
    (1920, 512),
    (1536, 640),
    (1280, 768),
    (1152, 896),
    (1024, 1024),
    (896, 1152),
    (768, 1280),
    (640, 1536),
    (512, 1920),
    (512, 2048),
)
# The 512-px area is supported by the 16x checkpoint only (upstream README, "Supported Size").
SIZES_512_AREA: tuple[tuple[int, int], ...] = (
    (1024, 256),
    (896, 256),
    (640, 384),
    (512, 512),
    (384, 640),
    (256, 896),
    (256, 1024),
)

# fal's enum presets as (width, height), exactly as fal documents them.
FAL_IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def supported_sizes(parallel_num: int) -> tuple[tuple[int, int], ...]:
    """The ``(height, width)`` sizes a checkpoint predicting ``parallel_num`` tokens per step serves."""
    if parallel_num == 64:
        return SIZES_1024_AREA
    if parallel_num == 16:
        return SIZES_1024_AREA + SIZES_512_AREA
    raise ValueError(f"parallel_num must be 16 or 64, got {parallel_num}")


def check_supported_size(height: int, width: int, parallel_num: int) -> None:
    """Raise ``ValueError`` naming the supported sizes when ``(height, width)`` is not one of them."""
    sizes = supported_sizes(parallel_num)
    if (height, width) not in sizes:
        listed = ", ".join(f"{w}x{h}" for h, w in sizes)
        raise ValueError(
            f"image size {width}x{height} (width x height) is not supported by the "
            f"{parallel_num}x checkpoint; supported sizes: {listed}"
        )


def snap_to_supported_size(width: int, height: int, parallel_num: int) -> tuple[int, int]:
    """Nearest supported size to ``width x height``: closest aspect ratio first, then closest area.

    Returns ``(height, width)``. Distances are measured on a log scale, so 2:1 and 1:2 are
    equally far from 1:1.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    wanted_aspect = math.log(width / height)
    wanted_area = math.log(width * height)

    def distance(size: tuple[int, int]) -> tuple[float, float]:
        h, w = size
        return (round(abs(math.log(w / h) - wanted_aspect), 9), abs(math.log(w * h) - wanted_area))

    return min(supported_sizes(parallel_num), key=distance)


def resolve_image_size(image_size: str | dict[str, int], parallel_num: int) -> tuple[int, int]:
    """fal's ``image_size`` (an enum name or ``{"width", "height"}``) snapped; returns ``(height, width)``."""
    if isinstance(image_size, str):
        try:
            width, height = FAL_IMAGE_SIZE_PRESETS[image_size]
        except KeyError:
            raise ValueError(
                f"unknown image_size {image_size!r}; expected one of {sorted(FAL_IMAGE_SIZE_PRESETS)}"
            ) from None
    else:
        width, height = int(image_size["width"]), int(image_size["height"])
    return snap_to_supported_size(width, height, parallel_num)
