"""Local object storage: files under unguessable names, with content type, owner and expiry.

Layout: ``<root>/<token>/<file_name>`` plus ``<root>/<token>/.meta.json``; ``token`` is 128 random
bits (URL-safe), so a file URL is a capability. Staging for uploads lives in ``<root>/.staging``.
All methods are blocking (filesystem): the API calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
META_NAME = ".meta.json"


def new_token() -> str:
    """An unguessable URL-safe name (128 bits)."""
    return secrets.token_urlsafe(16)


def is_token(value: str) -> bool:
    return bool(_TOKEN_RE.match(value))


def safe_file_name(name: str | None, content_type: str | None = None) -> str:
    """A file name safe for paths and URLs; falls back to ``file<ext>`` from the content type."""
    base = os.path.basename((name or "").replace("\\", "/"))
    cleaned = _UNSAFE_NAME_CHARS.sub("_", base).strip("._")[:128]
    if cleaned:
        return cleaned
    ext = mimetypes.guess_extension(content_type or "") or ".bin"
    return f"file{ext}"


@dataclass(frozen=True)
class StoredFile:
    """Metadata of one stored object."""

    token: str
    file_name: str
    content_type: str
    size: int
    owner: str
    created_at: float
    expires_at: float | None = None

    @property
    def url_path(self) -> str:
        return f"/files/{self.token}/{self.file_name}"

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


class LocalStorage:
    """A directory used as an object store."""

    def __init__(self, root: Path, default_ttl_s: int | None = None) -> None:
        self.root = Path(root)
        self.default_ttl_s = default_ttl_s
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def put_bytes(
        self, data: bytes, *, file_name: str, content_type: str, owner: str, ttl_s: int | None = None
    ) -> StoredFile:
        """Store ``data`` under a fresh token."""
        fd, tmp = tempfile.mkstemp(dir=self.staging)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return self.commit(Path(tmp), file_name=file_name, content_type=content_type, owner=owner, ttl_s=ttl_s)

    def commit(
        self,
        staged: Path,
        *,
        file_name: str,
        content_type: str,
        owner: str,
        ttl_s: int | None = None,
        token: str | None = None,
    ) -> StoredFile:
        """Move a staged file into place under ``token`` (fresh when omitted) and write its metadata."""
        token = token or new_token()
        if not is_token(token):
            raise ValueError("invalid storage token")
        name = safe_file_name(file_name, content_type)
        folder = self.root / token
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(staged, folder / name)
        ttl = ttl_s if ttl_s is not None else self.default_ttl_s
        now = time.time()
        meta = StoredFile(
            token=token,
            file_name=name,
            content_type=content_type or "application/octet-stream",
            size=(folder / name).stat().st_size,
            owner=owner,
            created_at=now,
            expires_at=now + ttl if ttl is not None else None,
        )
        (folder / META_NAME).write_text(json.dumps(asdict(meta)))
        return meta

    def new_staged_path(self) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.staging)
        os.close(fd)
        return Path(tmp)

    def lookup(self, token: str, file_name: str) -> tuple[StoredFile, Path] | None:
        """Metadata and path of a live file; None when unknown, expired or the name does not match."""
        if not is_token(token):
            return None
        try:
            meta = StoredFile(**json.loads((self.root / token / META_NAME).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if meta.file_name != file_name or meta.is_expired():
            return None
        path = self.root / token / meta.file_name
        return (meta, path) if path.is_file() else None

    def delete_expired(self, now: float | None = None) -> int:
        """Remove expired objects; returns how many."""
        removed = 0
        for meta_path in self.root.glob(f"*/{META_NAME}"):
            try:
                meta = StoredFile(**json.loads(meta_path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if meta.is_expired(now):
                shutil.rmtree(meta_path.parent, ignore_errors=True)
                removed += 1
        return removed


def lifecycle_ttl_s(header_value: str | None) -> tuple[dict[str, object] | None, int | None]:
    """Parse an ``X-Fal-Object-Lifecycle[-Preference]`` JSON header: (raw object, expiry seconds).

    Malformed values are ignored (fal treats the header as a preference).
    """
    if not header_value:
        return None, None
    try:
        value = json.loads(header_value)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    seconds = value.get("expiration_duration_seconds")
    if isinstance(seconds, int | float) and seconds > 0:
        return value, int(seconds)
    return value, None
