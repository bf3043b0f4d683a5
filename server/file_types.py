"""Which content types an upload may declare, and how a stored file is served on our origin.

Anyone with a key can upload, and ``/files/...`` is served from the API's own origin, so a file
declared ``text/html`` or ``image/svg+xml`` must never render there: only raster images,
audio/video, ``text/plain`` (inert under ``nosniff``) and ``application/octet-stream`` are served
under their own type; everything else is served as
``application/octet-stream`` with ``Content-Disposition: attachment``. Every file carries
``X-Content-Type-Options: nosniff`` and a sandboxing Content-Security-Policy. A declared type must
be a well-formed media type (``type/subtype[; param=value]``), so it can never break a header.
"""

from __future__ import annotations

import re

OCTET_STREAM = "application/octet-stream"
MAX_CONTENT_TYPE_CHARS = 255
FILE_CSP = "default-src 'none'; sandbox"

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_QUOTED = r'"[^"\\\x00-\x1f\x7f]*"'
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*$")

INLINE_IMAGE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/tiff",
        "image/heic",
        "image/heif",
    }
)  # raster only: image/svg+xml is a document that runs scripts
INLINE_MEDIA_PREFIXES = ("audio/", "video/")
INLINE_OTHER_TYPES = frozenset({OCTET_STREAM, "text/plain"})  # never executed by a browser under nosniff


def is_valid_content_type(value: str | None) -> bool:
    """Whether ``value`` is a well-formed media type that is safe to put in a header."""
    return bool(value) and len(value or "") <= MAX_CONTENT_TYPE_CHARS and bool(_MEDIA_TYPE.fullmatch(value or ""))


def base_type(content_type: str) -> str:
    """``type/subtype`` of a media type, lower-case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_inline_safe(content_type: str) -> bool:
    """Whether a file of this (validated) type may render inline on our origin."""
    kind = base_type(content_type)
    return kind in INLINE_IMAGE_TYPES or kind in INLINE_OTHER_TYPES or kind.startswith(INLINE_MEDIA_PREFIXES)


def download_headers(content_type: str, file_name: str) -> tuple[str, dict[str, str]]:
    """(media type to serve, extra headers) for a stored file declared as ``content_type``.

    ``file_name`` is a stored name (``storage.safe_file_name``: letters, digits, ``._-`` only).
    """
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": FILE_CSP}
    if is_valid_content_type(content_type) and is_inline_safe(content_type):
        return base_type(content_type), headers
    headers["Content-Disposition"] = f'attachment; filename="{file_name}"'
    return OCTET_STREAM, headers
