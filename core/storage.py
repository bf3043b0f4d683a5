"""Local object storage: files under unguessable names, with content type, owner and expiry.

Layout: ``<root>/<token>/<file_name>`` plus ``<root>/<token>/.meta.json``; ``token`` is 128 random
bits (URL-safe), so a file URL is a capability. A token's folder is created once, by the commit
that fills it: a second commit under the same token fails (``FileExistsError``) instead of
replacing the first file. Staging for uploads lives in ``<root>/.staging``: files being received,
and one ``parts-<upload token>`` folder per multipart upload, each part received under a unique
name (which copy of a part number is kept is the upload ledger's, ``server.upload_ledger``);
whatever is left there by a failed or abandoned upload is removed by ``delete_abandoned_staging``.

A full disk (``ENOSPC``, ``EDQUOT``) is ``InsufficientStorageError`` (fal's error shape, 507), and
a write that fails leaves nothing behind: no empty or partial file, no folder without metadata.
All methods are blocking (filesystem): the API calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import InsufficientStorageError

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


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in DISK_FULL_ERRNOS


@contextmanager
def disk_full_as_507() -> Iterator[None]:
    """Turn a full disk (or quota) inside the block into ``InsufficientStorageError``."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorageError() from exc
        raise


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


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` all at once: written to a neighbour, then renamed over it (readers never see
    a partial file; a failed write leaves no neighbour behind)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        staged = self.new_staged_path()
        try:
            with disk_full_as_507(), open(staged, "wb") as handle:
                handle.write(data)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return self.commit(staged, file_name=file_name, content_type=content_type, owner=owner, ttl_s=ttl_s)

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
        """Move a staged file into place under ``token`` (fresh when omitted) and write its metadata.

        The staged file is gone afterwards, whatever happens. ``FileExistsError`` when ``token`` holds
        a file already (it is never replaced); on any failure nothing of the new file is left.
        """
        token = token or new_token()
        if not is_token(token):
            staged.unlink(missing_ok=True)
            raise ValueError("invalid storage token")
        name = safe_file_name(file_name, content_type)
        folder = self.root / token
        try:
            folder.mkdir()  # once per token: a second commit under it fails here
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        try:
            with disk_full_as_507():
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
                write_atomically(folder / META_NAME, json.dumps(asdict(meta)).encode())
        except BaseException:
            staged.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return meta

    def new_staged_path(self) -> Path:
        with disk_full_as_507():
            fd, tmp = tempfile.mkstemp(dir=self.staging)
        os.close(fd)
        return Path(tmp)

    # --- multipart uploads --------------------------------------------------------------------

    def parts_folder(self, upload_token: str) -> Path:
        if not is_token(upload_token):
            raise ValueError("invalid upload token")
        return self.staging / f"{PARTS_FOLDER_PREFIX}{upload_token}"

    def new_incoming_part(self, upload_token: str) -> Path:
        """A fresh, uniquely named file to receive a part into (the ledger records which copy is kept)."""
        folder = self.parts_folder(upload_token)
        with disk_full_as_507():
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=INCOMING_PART_PREFIX)
        os.close(fd)
        return Path(tmp)

    def part_path(self, upload_token: str, file_name: str) -> Path:
        """Where a received part is kept; only names ``new_incoming_part`` makes are accepted."""
        if not file_name.startswith(INCOMING_PART_PREFIX) or os.path.basename(file_name) != file_name:
            raise ValueError("invalid part file name")
        return self.parts_folder(upload_token) / file_name

    def discard_part(self, upload_token: str, file_name: str) -> None:
        """Remove a received part (a replaced copy, or one refused); its folder too once empty."""
        self.part_path(upload_token, file_name).unlink(missing_ok=True)
        try:
            self.parts_folder(upload_token).rmdir()
        except OSError:  # other parts are still there (or it is gone already)
            pass

    def assemble_parts(self, upload_token: str, parts: Sequence[tuple[int, str]], max_bytes: int) -> Path:
        """Concatenate the parts ``(number, file name)`` in order (streamed, never whole in memory) into a
        staged file. The parts stay until ``delete_parts`` (after the commit: a failed one can be retried).

        Raises ``MissingPartError`` (a part file vanished), ``UploadTooLargeError`` or
        ``InsufficientStorageError`` (then nothing new is left behind).
        """
        paths = [self.part_path(upload_token, name) for _, name in parts]
        for (number, _), path in zip(parts, paths, strict=True):
            if not path.is_file():
                raise MissingPartError(number)
        if sum(path.stat().st_size for path in paths) > max_bytes:
            raise UploadTooLargeError(max_bytes)
        staged = self.new_staged_path()
        try:
            with disk_full_as_507(), open(staged, "wb") as out:
                for path in paths:
                    with open(path, "rb") as part:
                        shutil.copyfileobj(part, out, COPY_CHUNK_BYTES)
                    if out.tell() > max_bytes:
                        raise UploadTooLargeError(max_bytes)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def delete_parts(self, upload_token: str) -> None:
        shutil.rmtree(self.parts_folder(upload_token), ignore_errors=True)

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

    def delete(self, token: str) -> None:
        """Remove a stored object (nothing when there is none)."""
        if is_token(token):
            shutil.rmtree(self.root / token, ignore_errors=True)

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
