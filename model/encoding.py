"""PIL images to JPEG/PNG bytes, and bytes to data URIs (deterministic: same pixels, same bytes)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

# An image may carry, in ``image.info``, a dict of its own encodings ((format, JPEG quality or None) ->
# bytes) that ``encode_image`` reads and fills: a picture drawn again from the same request (the
# simulated model's) is encoded once. Only for images whose pixels never change once drawn.
ENCODINGS_INFO_KEY = "bitdance_encodings"
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
    known = image.info.get(ENCODINGS_INFO_KEY)
    key = (output_format, jpeg_quality if output_format == "jpeg" else None)
    data = known.get(key) if isinstance(known, dict) else None
    if data is None:
        buffer = io.BytesIO()
        if output_format == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        else:
            image.save(buffer, format="PNG")
        data = buffer.getvalue()
        if isinstance(known, dict):
            known[key] = data
    return EncodedImage(
        data=data,
        content_type=CONTENT_TYPES[output_format],
        extension=EXTENSIONS[output_format],
        width=image.width,
        height=image.height,
    )


def data_uri(encoded: EncodedImage) -> str:
    return f"data:{encoded.content_type};base64,{base64.b64encode(encoded.data).decode('ascii')}"
