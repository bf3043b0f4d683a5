"""``UploadService``: the clients' upload sessions, without HTTP.

``initiate`` keeps a ``PendingUpload`` in Redis under an unguessable upload token (for
``upload_ttl_s``); a single PUT, or parts then ``complete``, receive the bytes into staging and
commit them to ``LocalStorage`` under the file token that ``initiate`` promised, then forget the
session. Every upload, parts together, stays within ``max_upload_bytes``. Built once per app and
fetched by ``server.routes.files`` through ``server.deps``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import redis.asyncio as aioredis

from core.errors import FileNotFoundError_, PayloadTooLargeError
from core.requests.records import Keys
from core.settings import Settings
from core.storage import (
    LocalStorage,
    MissingPartError,
    StoredFile,
    UploadTooLargeError,
    is_token,
    new_token,
    safe_file_name,
)
from server.file_types import OCTET_STREAM, is_valid_content_type


@dataclass(frozen=True)
class PendingUpload:
    """An upload initiated and not committed yet: what its file will be, and whose."""

    file_token: str
    file_name: str
    content_type: str
    owner: str
    ttl_s: int | None  # the file's lifetime (object lifecycle preference); None: the storage default
    multipart: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PendingUpload:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            file_token=data["file_token"],
            file_name=data["file_name"],
            content_type=data["content_type"],
            owner=data["owner"],
            ttl_s=data.get("ttl_s"),
            multipart=bool(data.get("multipart")),
        )


class Initiated(NamedTuple):
    """An upload session just opened: its token (the upload URL's) and the file it will become."""

    upload_token: str
    file_token: str
    file_name: str


class UploadService:
    """Upload sessions in Redis, their bytes in ``LocalStorage``."""

    def __init__(self, client: aioredis.Redis, storage: LocalStorage, settings: Settings) -> None:
        self.client = client
        self.storage = storage
        self.settings = settings
        self.keys = Keys(settings.key_prefix)

    @property
    def max_upload_bytes(self) -> int:
        return self.settings.max_upload_bytes

    async def initiate(
        self, *, owner: str, content_type: str, file_name: str | None, ttl_s: int | None, multipart: bool
    ) -> Initiated:
        """Open a session for ``upload_ttl_s``; ``content_type`` is already a valid media type."""
        upload_token, file_token = new_token(), new_token()
        name = safe_file_name(file_name, content_type)
        pending = PendingUpload(file_token, name, content_type, owner, ttl_s, multipart)
        await self.client.set(self.keys.upload(upload_token), pending.to_json(), ex=self.settings.upload_ttl_s)
        return Initiated(upload_token, file_token, name)

    async def pending(self, upload_token: str) -> PendingUpload:
        """The open session (``FileNotFoundError_`` for an unknown, malformed or expired token)."""
        raw = await self.client.get(self.keys.upload(upload_token)) if is_token(upload_token) else None
        if raw is None:
            raise FileNotFoundError_("Upload not found or expired")
        return PendingUpload.from_json(raw)

    async def receive_file(
        self, upload_token: str, chunks: AsyncIterable[bytes], content_type: str | None
    ) -> StoredFile:
        """A single-request upload: the whole body, stored as the session's file.

        ``content_type`` (the PUT's) is used when initiate gave none that is valid."""
        pending = await self.pending(upload_token)
        staged = await anyio.to_thread.run_sync(self.storage.new_staged_path)
        try:
            await self._receive_to(chunks, staged, self.max_upload_bytes)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return await self._commit(staged, pending, content_type, upload_token)

    async def receive_part(self, upload_token: str, part_number: int, chunks: AsyncIterable[bytes]) -> str:
        """One part of a multipart upload (replacing its earlier copy); its etag (MD5 hex)."""
        await self.pending(upload_token)
        storage = self.storage
        received = await anyio.to_thread.run_sync(storage.parts_size, upload_token, part_number)
        incoming = await anyio.to_thread.run_sync(storage.new_incoming_part, upload_token)
        try:
            etag = await self._receive_to(chunks, incoming, self.max_upload_bytes - received)
            await anyio.to_thread.run_sync(storage.keep_part, upload_token, incoming, part_number)
        except BaseException:
            incoming.unlink(missing_ok=True)
            raise
        return etag

    async def complete(self, upload_token: str, part_numbers: list[int]) -> StoredFile:
        """Assemble the parts (``part_numbers`` in order; empty: every part received) into the file."""
        pending = await self.pending(upload_token)
        storage = self.storage
        numbers = part_numbers or await anyio.to_thread.run_sync(storage.part_numbers, upload_token)
        try:
            staged = await anyio.to_thread.run_sync(
                storage.assemble_parts, upload_token, numbers, self.max_upload_bytes
            )
        except MissingPartError as exc:
            raise FileNotFoundError_(str(exc)) from exc
        except UploadTooLargeError as exc:
            raise PayloadTooLargeError(str(exc)) from exc
        return await self._commit(staged, pending, None, upload_token)

    async def _receive_to(self, chunks: AsyncIterable[bytes], path: Path, limit: int) -> str:
        """Write ``chunks`` to ``path`` (at most ``limit`` bytes); returns their MD5 hex (the part etag)."""
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        async with await anyio.open_file(path, "wb") as handle:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"Upload larger than {self.max_upload_bytes} bytes")
                digest.update(chunk)
                await handle.write(chunk)
        return digest.hexdigest()

    async def _commit(
        self, staged: Path, pending: PendingUpload, content_type: str | None, upload_token: str
    ) -> StoredFile:
        def commit() -> StoredFile:
            return self.storage.commit(
                staged,
                file_name=pending.file_name,
                content_type=declared_type(pending.content_type, content_type),
                owner=pending.owner,
                ttl_s=pending.ttl_s,
                token=pending.file_token,
            )

        try:
            meta = await anyio.to_thread.run_sync(commit)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        await self.client.delete(self.keys.upload(upload_token))
        return meta


def declared_type(initiated: str | None, header: str | None) -> str:
    """The type given at initiate, else the PUT's Content-Type; only well-formed types are kept."""
    for candidate in (initiated, header):
        if candidate and is_valid_content_type(candidate):
            return candidate
    return OCTET_STREAM
