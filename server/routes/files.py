"""Object storage over HTTP: ``GET /files/...`` and the clients' upload flow (``/storage/upload/...``).

``initiate`` returns an ``upload_url`` carrying its own unguessable token (the JS client PUTs to it
with no Authorization) and the final ``file_url``. Multipart: PUT ``{upload_url}/{n}`` per part,
then POST ``{upload_url}/complete``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator

from server.auth import Caller, authenticate
from server.deps import settings_of, storage_of
from server.errors import FileNotFoundError_, PayloadTooLargeError
from server.file_types import MAX_CONTENT_TYPE_CHARS, OCTET_STREAM, download_headers, is_valid_content_type
from server.object_lifecycle import LIFECYCLE_PREFERENCE_HEADER, UPLOAD_LIFECYCLE_HEADER, parse_object_lifecycle
from server.queue.records import Keys
from server.settings import Settings
from server.storage import (
    LocalStorage,
    MissingPartError,
    UploadTooLargeError,
    is_token,
    new_token,
    safe_file_name,
)
from server.urls import public_base

router = APIRouter(tags=["storage"])


MAX_UPLOAD_PARTS = 10_000  # as S3 multipart uploads
PartNumber = Annotated[int, Field(ge=1, le=MAX_UPLOAD_PARTS)]


class UploadInitiate(BaseModel):
    content_type: str = Field(default=OCTET_STREAM, max_length=MAX_CONTENT_TYPE_CHARS)
    file_name: str | None = Field(default=None, max_length=1024)

    @field_validator("content_type")
    @classmethod
    def _media_type(cls, value: str) -> str:
        if not is_valid_content_type(value):
            raise ValueError("content_type should be a media type such as image/png")
        return value


class UploadTarget(BaseModel):
    upload_url: str
    file_url: str


class UploadPart(BaseModel):
    partNumber: PartNumber  # noqa: N815 - fal's spelling
    etag: str = Field(max_length=256)


class UploadComplete(BaseModel):
    parts: list[UploadPart] = Field(default_factory=list, max_length=MAX_UPLOAD_PARTS)

    @field_validator("parts")
    @classmethod
    def _distinct_numbers(cls, parts: list[UploadPart]) -> list[UploadPart]:
        numbers = [part.partNumber for part in parts]
        if len(set(numbers)) != len(numbers):
            raise ValueError("each partNumber may be listed once")
        return parts


@router.get("/files/{token}/{file_name}", summary="Download a stored file")
async def get_file(
    token: str,
    file_name: str,
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
    settings: Annotated[Settings, Depends(settings_of)],
) -> FileResponse:
    found = await anyio.to_thread.run_sync(storage.lookup, token, file_name)
    if found is None:
        raise FileNotFoundError_()
    meta, path = found
    if settings.files_require_key:
        caller = await authenticate(request)
        if caller.key_id != meta.owner:
            raise FileNotFoundError_()
    media_type, headers = download_headers(meta.content_type, meta.file_name)
    return FileResponse(path, media_type=media_type, headers=headers)


async def _initiate(request: Request, body: UploadInitiate, caller: Caller, multipart: bool) -> UploadTarget:
    settings: Settings = request.app.state.settings
    header = UPLOAD_LIFECYCLE_HEADER if UPLOAD_LIFECYCLE_HEADER in request.headers else LIFECYCLE_PREFERENCE_HEADER
    lifecycle = parse_object_lifecycle(request.headers.get(header), header)
    ttl_s = lifecycle.expiration_duration_seconds if lifecycle else None
    upload_token, file_token = new_token(), new_token()
    name = safe_file_name(body.file_name, body.content_type)
    pending = {
        "file_token": file_token,
        "file_name": name,
        "content_type": body.content_type,
        "owner": caller.key_id,
        "ttl_s": ttl_s,
        "multipart": multipart,
    }
    key = Keys(settings.key_prefix).upload(upload_token)
    await request.app.state.redis.set(key, json.dumps(pending), ex=settings.upload_ttl_s)
    base = public_base(request, settings.public_base_url)
    return UploadTarget(
        upload_url=f"{base}/storage/upload/{upload_token}",
        file_url=f"{base}/files/{file_token}/{name}",
    )


@router.post("/storage/upload/initiate", response_model=UploadTarget, summary="Start an upload")
async def initiate_upload(
    body: UploadInitiate, request: Request, caller: Annotated[Caller, Depends(authenticate)]
) -> UploadTarget:
    return await _initiate(request, body, caller, multipart=False)


@router.post("/storage/upload/initiate-multipart", response_model=UploadTarget, summary="Start a multipart upload")
async def initiate_multipart(
    body: UploadInitiate, request: Request, caller: Annotated[Caller, Depends(authenticate)]
) -> UploadTarget:
    return await _initiate(request, body, caller, multipart=True)


async def _pending(request: Request, upload_token: str) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    raw = (
        await request.app.state.redis.get(Keys(settings.key_prefix).upload(upload_token))
        if is_token(upload_token)
        else None
    )
    if raw is None:
        raise FileNotFoundError_("Upload not found or expired")
    pending: dict[str, Any] = json.loads(raw)
    return pending


async def _receive_to(request: Request, path: Path, limit: int, max_upload_bytes: int) -> str:
    """Stream the request body to ``path`` (at most ``limit`` bytes); returns its MD5 hex (the part etag)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    async with await anyio.open_file(path, "wb") as handle:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"Upload larger than {max_upload_bytes} bytes")
            digest.update(chunk)
            await handle.write(chunk)
    return digest.hexdigest()


@router.put("/storage/upload/{upload_token}", summary="Upload target (the upload_url)")
async def put_upload(
    upload_token: str,
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
    content_type: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    pending = await _pending(request, upload_token)
    staged = await anyio.to_thread.run_sync(storage.new_staged_path)
    try:
        max_bytes = request.app.state.settings.max_upload_bytes
        await _receive_to(request, staged, max_bytes, max_bytes)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    meta = await _commit(request, storage, staged, pending, content_type, upload_token)
    return JSONResponse({"file_url": public_base(request) + meta.url_path, "size": meta.size})


async def _commit(
    request: Request,
    storage: LocalStorage,
    staged: Path,
    pending: dict[str, Any],
    content_type: str | None,
    upload_token: str,
) -> Any:
    settings: Settings = request.app.state.settings

    def commit() -> Any:
        return storage.commit(
            staged,
            file_name=pending["file_name"],
            content_type=_declared_type(pending["content_type"], content_type),
            owner=pending["owner"],
            ttl_s=pending.get("ttl_s"),
            token=pending["file_token"],
        )

    try:
        meta = await anyio.to_thread.run_sync(commit)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    await request.app.state.redis.delete(Keys(settings.key_prefix).upload(upload_token))
    return meta


def _declared_type(initiated: str | None, header: str | None) -> str:
    """The type given at initiate, else the PUT's Content-Type; only well-formed types are kept."""
    for candidate in (initiated, header):
        if candidate and is_valid_content_type(candidate):
            return candidate
    return OCTET_STREAM


@router.put("/storage/upload/{upload_token}/{part_number}", response_model=UploadPart, summary="Upload one part")
async def put_part(
    upload_token: str,
    part_number: Annotated[int, PathParam(ge=1, le=MAX_UPLOAD_PARTS)],
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
) -> UploadPart:
    """Parts of one upload together stay within ``max_upload_bytes``; a part replaces its earlier copy."""
    await _pending(request, upload_token)
    max_bytes: int = request.app.state.settings.max_upload_bytes
    received = await anyio.to_thread.run_sync(storage.parts_size, upload_token, part_number)
    incoming = await anyio.to_thread.run_sync(storage.new_incoming_part, upload_token)
    try:
        etag = await _receive_to(request, incoming, max_bytes - received, max_bytes)
        await anyio.to_thread.run_sync(storage.keep_part, upload_token, incoming, part_number)
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    return UploadPart(partNumber=part_number, etag=etag)


@router.post("/storage/upload/{upload_token}/complete", summary="Assemble a multipart upload")
async def complete_multipart(
    upload_token: str,
    body: UploadComplete,
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
) -> JSONResponse:
    pending = await _pending(request, upload_token)
    max_bytes: int = request.app.state.settings.max_upload_bytes
    numbers = [p.partNumber for p in body.parts] or await anyio.to_thread.run_sync(storage.part_numbers, upload_token)
    try:
        staged = await anyio.to_thread.run_sync(storage.assemble_parts, upload_token, numbers, max_bytes)
    except MissingPartError as exc:
        raise FileNotFoundError_(str(exc)) from exc
    except UploadTooLargeError as exc:
        raise PayloadTooLargeError(str(exc)) from exc
    meta = await _commit(request, storage, staged, pending, None, upload_token)
    return JSONResponse({"file_url": public_base(request) + meta.url_path, "size": meta.size})
