"""fal's schema for the ``fal-ai/bitdance`` endpoint: input and output models with every bound.

The bounds live here so that FastAPI's 422 body (``{"detail": [{"loc", "msg", "type"}]}``) is fal's
shape without any hand-written validation. Chosen limits that fal does not publish:

- ``prompt``: 1 to ``PROMPT_MAX_CHARS`` (10000) characters, not only whitespace, no lone surrogate,
  and at most ``PROMPT_MAX_TOKENS`` (10000) tokens by ``prompt_token_bound``: the API has no
  tokenizer, and the prompt's UTF-8 bytes (after the NFC normalization the checkpoint's tokenizer
  applies) bound the byte-level BPE tokens from above, each token covering at least one byte. So an
  ASCII prompt may still have 10000 characters, while 10000 x U+1D400 (4 bytes and up to 4 tokens
  each: 40000 tokens) is refused; ``tests/unit/model/test_prompt_token_bound.py`` checks the bound
  against the checkpoint tokenizer's real counts.
- ``image_size`` as ``{"width", "height"}``: each 256..2048 px; the request is snapped to the nearest
  size the checkpoint supports (closest aspect ratio, then area) and the output reports the actual size.
- ``seed``: 0..2**63-1.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import PydanticCustomError

PROMPT_MAX_CHARS = 10_000
PROMPT_MAX_TOKENS = 10_000  # as bounded by prompt_token_bound
IMAGE_SIDE_MIN = 256
IMAGE_SIDE_MAX = 2048
SEED_MAX = 2**63 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\\ud800" escape: not text, cannot be stored

ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
OutputFormat = Literal["jpeg", "png"]


def prompt_token_bound(prompt: str) -> int:
    """An upper bound of the tokens a byte-level BPE tokenizer makes of ``prompt``: its UTF-8 bytes,
    after NFC normalization (which Qwen's tokenizer applies, and which may lengthen a text: U+1D160
    becomes three code points) or before it, whichever is longer. Every token, special tokens
    included, stands for at least one byte."""
    raw = len(prompt.encode("utf-8", "surrogatepass"))
    return max(raw, len(unicodedata.normalize("NFC", prompt).encode("utf-8", "surrogatepass")))


class ImageSize(BaseModel):
    """A custom output size; snapped to the nearest size the loaded checkpoint supports."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(default=1024, ge=IMAGE_SIDE_MIN, le=IMAGE_SIDE_MAX, description="Width in pixels.")
    height: int = Field(default=1024, ge=IMAGE_SIDE_MIN, le=IMAGE_SIDE_MAX, description="Height in pixels.")


class BitDanceInput(BaseModel):
    """Input of ``fal-ai/bitdance`` (text to image)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, json_schema_extra={"title": "BitDanceInput"})

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=PROMPT_MAX_CHARS,
        description="The prompt to generate an image from.",
        examples=["A red fox in a snowy forest, golden hour, photorealistic"],
    )
    image_size: ImageSizePreset | ImageSize = Field(
        default="square_hd",
        description=(
            "The size of the generated image: a preset or {width, height}. Snapped to the nearest "
            "supported size; the output reports the actual size."
        ),
    )
    num_inference_steps: int = Field(
        default=25,
        ge=10,
        le=100,
        description="Sampling steps of the diffusion head, run for each patch of the image (64x: 64 patches).",
    )
    guidance_scale: float = Field(default=7.5, ge=1.0, le=15.0, description="Classifier-free guidance scale (CFG).")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="The same seed and prompt give the same image. Random when omitted.",
    )
    num_images: int = Field(default=1, ge=1, le=4, description="Number of images to generate.")
    enable_safety_checker: bool = Field(default=True, description="Replace images flagged as NSFW by a black image.")
    output_format: OutputFormat = Field(default="jpeg", description="Format of the generated images.")
    sync_mode: bool = Field(
        default=False,
        description="Return images as data URIs in the response instead of stored files.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        if _LONE_SURROGATE.search(value):
            raise PydanticCustomError("string_unicode", "Input should be valid Unicode text (no lone surrogates)")
        if prompt_token_bound(value) > PROMPT_MAX_TOKENS:
            raise PydanticCustomError(
                "string_too_long",
                "Prompt should have at most {max_tokens} tokens, counted as its UTF-8 bytes (an upper bound "
                "of its tokens): {max_tokens} ASCII characters, fewer of other scripts or emoji",
                {"max_tokens": PROMPT_MAX_TOKENS},
            )
        return value

    @field_validator("image_size", mode="wrap")
    @classmethod
    def _image_size(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> str | ImageSize:
        # Validated by hand so that errors point at ``image_size`` (or its width/height), not at a
        # union member: fal's JS client matches field errors on the last ``loc`` element.
        if isinstance(value, ImageSize):
            return value
        if isinstance(value, str):
            if value in get_args(ImageSizePreset):
                return value
            raise PydanticCustomError(
                "literal_error",
                "Input should be one of {expected}, or an object with width and height",
                {"expected": ", ".join(get_args(ImageSizePreset))},
            )
        if isinstance(value, dict):
            return ImageSize.model_validate(value)
        raise PydanticCustomError("model_type", "Input should be a preset name or an object with width and height")

    def image_size_value(self) -> str | dict[str, int]:
        """``image_size`` in the form ``model.resolutions.resolve_image_size`` takes."""
        if isinstance(self.image_size, ImageSize):
            return {"width": self.image_size.width, "height": self.image_size.height}
        return self.image_size


class ImageFile(BaseModel):
    """A generated image (fal's ``Image``: a ``File`` with width and height)."""

    url: str = Field(..., description="URL of the image (a data URI with sync_mode).")
    content_type: str = Field(..., examples=["image/jpeg"])
    file_name: str
    file_size: int | None = Field(default=None, description="Size in bytes.")
    width: int | None = None
    height: int | None = None


class BitDanceOutput(BaseModel):
    """Output of ``fal-ai/bitdance``."""

    model_config = ConfigDict(json_schema_extra={"title": "BitDanceOutput"})

    images: list[ImageFile] = Field(..., description="The generated images.")
    seed: int = Field(..., description="The seed used (give it back to reproduce the images).")
    has_nsfw_concepts: list[bool] = Field(..., description="Per image: whether it was flagged NSFW.")
    prompt: str = Field(..., description="The prompt used.")
