"""Local object storage: files under unguessable names, with content type, owner and expiry.

Layout: ``<root>/<token>/<file_name>`` plus ``<root>/<token>/.meta.json``; ``token`` is 128 random
bits (URL-safe), so a file URL is a capability. Staging for uploads lives in ``<root>/.staging``:
files being received, and one ``parts-<upload token>`` folder per multipart upload (part ``n`` in
file ``n``); whatever is left there by a failed or abandoned upload is removed by
``delete_abandoned_staging``. All methods are blocking (filesystem): the API calls them through
``anyio.to_thread``.
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
PARTS_FOLDER_PREFIX = "parts-"
INCOMING_PART_PREFIX = ".incoming-"
COPY_CHUNK_BYTES = 1 << 20


class MissingPartError(LookupError):
    """A multipart completion lists a part that was never uploaded."""

    def __init__(self, part_number: int) -> None:
        super().__init__(f"Missing upload part {part_number}")
        self.part_number = part_number


class UploadTooLargeError(ValueError):
    """An upload (all its parts together) is larger than allowed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"Upload larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


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


def _last_modified(entry: Path) -> float:
    """mtime of a file, or the newest of a folder and its files (a part being received counts)."""
    times = [entry.stat().st_mtime]
    if entry.is_dir():
        times += [child.stat().st_mtime for child in entry.iterdir()]
    return max(times)


def file_url_path(token: str, file_name: str) -> str:
    """Where ``GET /files/...`` serves a stored file (the API and the workers build its URL from this)."""
    return f"/files/{token}/{file_name}"


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
        return file_url_path(self.token, self.file_name)

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

    # --- multipart uploads --------------------------------------------------------------------

    def parts_folder(self, upload_token: str) -> Path:
        if not is_token(upload_token):
            raise ValueError("invalid upload token")
        return self.staging / f"{PARTS_FOLDER_PREFIX}{upload_token}"

    def part_numbers(self, upload_token: str) -> list[int]:
        """The numbers of the parts received so far, ascending."""
        folder = self.parts_folder(upload_token)
        if not folder.is_dir():
            return []
        return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit())

    def parts_size(self, upload_token: str, excluding: int | None = None) -> int:
        """Bytes received so far for this upload (without part ``excluding``, about to be replaced)."""
        folder = self.parts_folder(upload_token)
        return sum((folder / str(n)).stat().st_size for n in self.part_numbers(upload_token) if n != excluding)

    def new_incoming_part(self, upload_token: str) -> Path:
        """A fresh file to receive a part into; ``keep_part`` gives it its number once complete."""
        folder = self.parts_folder(upload_token)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=INCOMING_PART_PREFIX)
        os.close(fd)
        return Path(tmp)

    def keep_part(self, upload_token: str, incoming: Path, part_number: int) -> None:
        os.replace(incoming, self.parts_folder(upload_token) / str(part_number))

    def assemble_parts(self, upload_token: str, part_numbers: list[int], max_bytes: int) -> Path:
        """Concatenate the parts (streamed, never whole in memory) into a staged file; the parts go.

        Raises ``MissingPartError`` or ``UploadTooLargeError`` (then nothing new is left behind).
        """
        folder = self.parts_folder(upload_token)
        paths = [folder / str(n) for n in part_numbers]
        for number, path in zip(part_numbers, paths, strict=True):
            if not path.is_file():
                raise MissingPartError(number)
        if sum(path.stat().st_size for path in paths) > max_bytes:
            raise UploadTooLargeError(max_bytes)
        staged = self.new_staged_path()
        try:
            with open(staged, "wb") as out:
                for path in paths:
                    with open(path, "rb") as part:
                        shutil.copyfileobj(part, out, COPY_CHUNK_BYTES)
                    if out.tell() > max_bytes:  # a part replaced since the sizes were summed
                        raise UploadTooLargeError(max_bytes)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        return staged

    def delete_abandoned_staging(self, max_age_s: float, now: float | None = None) -> int:
        """Remove staged files and part folders untouched for ``max_age_s`` (their upload expired)."""
        cutoff = (now or time.time()) - max_age_s
        removed = 0
        for entry in self.staging.iterdir():
            try:
                if _last_modified(entry) >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError:  # removed meanwhile by the request that owned it
                continue
            removed += 1
        return removed

    # --- downloads ------------------------------------------------------------------------------

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
