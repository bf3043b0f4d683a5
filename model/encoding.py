"""PIL images to JPEG/PNG bytes, and bytes to data URIs (deterministic: same pixels, same bytes)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def encode_image(image: Image.Image, output_format: str, jpeg_quality: int = 95) -> EncodedImage:
    """Encode one image; JPEG drops alpha. Raises ``ValueError`` for an unknown format."""
    if output_format not in CONTENT_TYPES:
        raise ValueError(f"output_format must be one of {sorted(CONTENT_TYPES)}, got {output_format!r}")
    buffer = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, format="PNG")
    return EncodedImage(
        data=buffer.getvalue(),
        content_type=CONTENT_TYPES[output_format],
        extension=EXTENSIONS[output_format],
        width=image.width,
        height=image.height,
    )


def data_uri(encoded: EncodedImage) -> str:
    return f"data:{encoded.content_type};base64,{base64.b64encode(encoded.data).decode('ascii')}"
