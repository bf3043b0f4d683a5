"""``UploadService``: the clients' upload sessions, without HTTP.

``initiate`` keeps a ``PendingUpload`` in Redis under an unguessable upload token (for
``upload_ttl_s``); a single PUT, or parts then ``complete``, receive the bytes into staging and
commit them to ``LocalStorage`` under the file token that ``initiate`` promised, then forget the
session. What an upload holds and who completes it is its ledger's (``server.upload_ledger``):

- every byte is reserved before it is written, so an upload, parts together and parts sent in
  parallel alike, stays within ``max_upload_bytes`` (413 beyond; the refused bytes are removed);
- one completion wins: a second one gets ``409`` while the first runs and the same answer after
  it (a second PUT of the whole file gets ``409``); parts sent once the completion began get 409;
- a full disk is ``507``, with nothing left behind.

Built once per app and fetched by ``server.routes.files`` through ``server.deps``.
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

from core.errors import BadRequestError, ConflictError, FileNotFoundError_, PayloadTooLargeError
from core.requests.records import Keys
from core.settings import Settings
from core.storage import (
    LocalStorage,
    MissingPartError,
    StoredFile,
    UploadTooLargeError,
    disk_full_as_507,
    is_token,
    new_token,
    safe_file_name,
)
from server.file_types import OCTET_STREAM, is_valid_content_type
from server.upload_ledger import ClaimOutcome, KeptPart, Reservation, UploadLedger


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


class Received(NamedTuple):
    """Bytes written to a staged file: how many (all reserved in the ledger) and their MD5 hex (an etag)."""

    size: int
    etag: str


class UploadService:
    """Upload sessions in Redis, their bytes in ``LocalStorage``."""

    def __init__(self, client: aioredis.Redis, storage: LocalStorage, settings: Settings) -> None:
        self.client = client
        self.storage = storage
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.ledger = UploadLedger(client)

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

    async def check_known(self, upload_token: str) -> None:
        """``FileNotFoundError_`` unless the token names an upload, open or completed (checked before a
        completion's body is read)."""
        session = self.keys.upload(upload_token)
        if not is_token(upload_token) or not await self.client.exists(session, UploadLedger.key(session)):
            raise FileNotFoundError_("Upload not found or expired")

    async def _check_open(self, upload_token: str) -> PendingUpload:
        """The session, when bytes may still be sent to it (409 once a completion has begun)."""
        if is_token(upload_token):
            await self._reserve(upload_token, 0)
        return await self.pending(upload_token)

    async def receive_file(
        self,
        upload_token: str,
        chunks: AsyncIterable[bytes],
        content_type: str | None,
        declared_bytes: int | None = None,
    ) -> StoredFile:
        """A single-request upload: the whole body, stored as the session's file.

        ``content_type`` (the PUT's) is used when initiate gave none that is valid; ``declared_bytes``
        (its Content-Length) is reserved before the first byte is read."""
        pending = await self._check_open(upload_token)
        staged = await anyio.to_thread.run_sync(self.storage.new_staged_path)
        received = None
        try:
            received = await self._receive_to(chunks, staged, upload_token, declared_bytes)
            claim = await self.ledger.claim(self.keys.upload(upload_token))
            if claim.outcome is not ClaimOutcome.CLAIMED:  # another PUT (or a complete) won
                raise ConflictError("Upload already completed or being completed")
            return await self._commit(staged, pending, content_type, upload_token)
        except BaseException:
            staged.unlink(missing_ok=True)
            if received is not None:
                await self._release(upload_token, received.size)
            raise

    async def receive_part(
        self, upload_token: str, part_number: int, chunks: AsyncIterable[bytes], declared_bytes: int | None = None
    ) -> str:
        """One part of a multipart upload (replacing its earlier copy); its etag (MD5 hex)."""
        await self._check_open(upload_token)
        storage = self.storage
        incoming = await anyio.to_thread.run_sync(storage.new_incoming_part, upload_token)
        received = None
        try:
            received = await self._receive_to(chunks, incoming, upload_token, declared_bytes)
            part = KeptPart(part_number, incoming.name, received.size)
            kept, replaced = await self.ledger.keep_part(self.keys.upload(upload_token), part)
            if not kept:
                raise ConflictError("Upload already completed or being completed: part not kept")
        except BaseException:
            await anyio.to_thread.run_sync(storage.discard_part, upload_token, incoming.name)
            if received is not None:
                await self._release(upload_token, received.size)
            raise
        if replaced:
            await anyio.to_thread.run_sync(storage.discard_part, upload_token, replaced)
        return received.etag

    async def complete(self, upload_token: str, part_numbers: list[int]) -> StoredFile:
        """Assemble the parts (``part_numbers`` in order; empty: every part received) into the file.

        One call wins the completion; a second one gets 409 while it runs and its answer after."""
        session = self.keys.upload(upload_token)
        claim = await self.ledger.claim(session) if is_token(upload_token) else None
        if claim is None or claim.outcome is ClaimOutcome.MISSING:
            raise FileNotFoundError_("Upload not found or expired")
        if claim.outcome is ClaimOutcome.COMPLETING:
            raise ConflictError("Upload is being completed by another request")
        if claim.outcome is ClaimOutcome.COMPLETED:
            assert claim.answer is not None
            return StoredFile(**claim.answer)
        try:
            pending = await self.pending(upload_token)
            numbers = part_numbers or sorted(claim.parts)
            if not numbers:
                raise BadRequestError("Upload has no parts: upload at least one part before completing")
            missing = [n for n in numbers if n not in claim.parts]
            if missing:
                raise FileNotFoundError_(str(MissingPartError(missing[0])))
            chosen = [(n, claim.parts[n].file_name) for n in numbers]
            staged = await anyio.to_thread.run_sync(
                self.storage.assemble_parts, upload_token, chosen, self.max_upload_bytes
            )
        except MissingPartError as exc:
            await self.ledger.reopen(session)
            raise FileNotFoundError_(str(exc)) from exc
        except UploadTooLargeError as exc:
            await self.ledger.reopen(session)
            raise PayloadTooLargeError(str(exc)) from exc
        except BaseException:
            await self.ledger.reopen(session)
            raise
        return await self._commit(staged, pending, None, upload_token)

    async def _reserve(self, upload_token: str, nbytes: int) -> None:
        outcome = await self.ledger.reserve(self.keys.upload(upload_token), nbytes, self.max_upload_bytes)
        if outcome is Reservation.TOO_LARGE:
            raise PayloadTooLargeError(f"Upload larger than {self.max_upload_bytes} bytes")
        if outcome is Reservation.NOT_OPEN:
            raise ConflictError("Upload already completed or being completed")
        if outcome is Reservation.NO_SESSION:
            raise FileNotFoundError_("Upload not found or expired")

    async def _release(self, upload_token: str, nbytes: int) -> None:
        await self.ledger.release(self.keys.upload(upload_token), nbytes)

    async def _receive_to(
        self, chunks: AsyncIterable[bytes], path: Path, upload_token: str, declared_bytes: int | None
    ) -> Received:
        """Write ``chunks`` to ``path``, each byte reserved in the ledger before it is written: the declared
        size up front (a body that cannot fit is refused before it is read), then any chunk beyond it.
        413 when the upload's reservations would pass ``max_upload_bytes``. What was reserved and not
        written is released, and on failure everything this call reserved."""
        digest = hashlib.md5(usedforsecurity=False)
        size = reserved = 0
        try:
            if declared_bytes:
                await self._reserve(upload_token, declared_bytes)
                reserved = declared_bytes
            async with await anyio.open_file(path, "wb") as handle:
                async for chunk in chunks:
                    if size + len(chunk) > reserved:
                        needed = size + len(chunk) - reserved
                        await self._reserve(upload_token, needed)
                        reserved += needed
                    digest.update(chunk)
                    with disk_full_as_507():
                        await handle.write(chunk)
                    size += len(chunk)
        except BaseException:
            await self._release(upload_token, reserved)
            raise
        await self._release(upload_token, reserved - size)
        return Received(size, digest.hexdigest())

    async def _commit(
        self, staged: Path, pending: PendingUpload, content_type: str | None, upload_token: str
    ) -> StoredFile:
        """Store the staged file under the promised token (this call holds the claimed completion)."""
        session = self.keys.upload(upload_token)

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
        except FileExistsError as exc:  # only if the ledger was lost (Redis flushed): never replace a file
            raise ConflictError("Upload already completed") from exc
        except BaseException:
            await self.ledger.reopen(session)
            raise
        await self.ledger.finish(session, asdict(meta), self.settings.upload_ttl_s)
        await self.client.delete(session)
        await anyio.to_thread.run_sync(self.storage.delete_parts, upload_token)
        return meta


def declared_type(initiated: str | None, header: str | None) -> str:
    """The type given at initiate, else the PUT's Content-Type; only well-formed types are kept."""
    for candidate in (initiated, header):
        if candidate and is_valid_content_type(candidate):
            return candidate
    return OCTET_STREAM
