"""The simulated model's pictures: deterministic from prompt, seed and index, marked as simulated.

A smooth colour field (a small random grid scaled up) drawn from a hash of the prompt, seed and
image index, with "SIMULATED", the seed and the start of the prompt written on it. Same request,
same pixels; a few milliseconds per megapixel.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

GRID = 6  # colour cells per side before scaling up
SCALE = 4  # drawn at 1/SCALE of the size, then enlarged (cheap to draw and to encode)
MARK = "SIMULATED"


def picture_seed(prompt: str, seed: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{index}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def render_picture(prompt: str, seed: int, index: int, width: int, height: int) -> Image.Image:
    """One RGB image of ``width x height`` (a new image: the caller may mark or change it)."""
    return _marked_small(prompt, seed, index, width, height).resize((width, height), Image.Resampling.NEAREST)


@lru_cache(maxsize=128)  # ~200 KB each at 1024x1024: the text drawing is most of a picture's cost
def _marked_small(prompt: str, seed: int, index: int, width: int, height: int) -> Image.Image:
    """The picture at 1/SCALE of its size, marked; shared between calls, never changed."""
    rng = random.Random(picture_seed(prompt, seed, index))
    cells = bytes(rng.randrange(40, 216) for _ in range(GRID * GRID * 3))
    small_w, small_h = max(width // SCALE, 1), max(height // SCALE, 1)
    image = Image.frombytes("RGB", (GRID, GRID), cells).resize((small_w, small_h), Image.Resampling.BICUBIC)
    _write_marks(image, prompt, seed, index, f"{width}x{height}")
    return image


def _write_marks(image: Image.Image, prompt: str, seed: int, index: int, size: str) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    big, small = _font(max(short // 6, 10)), _font(max(short // 20, 8))
    margin = short // 16
    draw.text((margin, margin), MARK, fill=(255, 255, 255), font=big, stroke_width=1, stroke_fill=(0, 0, 0))
    caption = prompt if len(prompt) <= 40 else prompt[:37] + "..."
    lines = [f"seed {seed}  image {index}  {size}", caption]
    y = height - margin - len(lines) * (short // 16)
    for line in lines:
        draw.text((margin, y), line, fill=(255, 255, 255), font=small)
        y += short // 16
