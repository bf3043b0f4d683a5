"""Object storage over HTTP: ``GET /files/...`` and the clients' upload flow (``/storage/upload/...``).

``initiate`` returns an ``upload_url`` carrying its own unguessable token (the JS client PUTs to it
with no Authorization) and the final ``file_url``. Multipart: PUT ``{upload_url}/{n}`` per part,
then POST ``{upload_url}/complete``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from server.auth import Caller, authenticate
from server.deps import settings_of, storage_of
from server.errors import FileNotFoundError_, PayloadTooLargeError
from server.queue.records import Keys
from server.settings import Settings
from server.storage import LocalStorage, is_token, lifecycle_ttl_s, new_token, safe_file_name
from server.urls import public_base

router = APIRouter(tags=["storage"])


class UploadInitiate(BaseModel):
    content_type: str = Field(default="application/octet-stream", max_length=255)
    file_name: str | None = Field(default=None, max_length=1024)


class UploadTarget(BaseModel):
    upload_url: str
    file_url: str


class UploadPart(BaseModel):
    partNumber: int  # noqa: N815 - fal's spelling
    etag: str


class UploadComplete(BaseModel):
    parts: list[UploadPart] = Field(default_factory=list)


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
    return FileResponse(path, media_type=meta.content_type, filename=None)


async def _initiate(request: Request, body: UploadInitiate, caller: Caller, multipart: bool) -> UploadTarget:
    settings: Settings = request.app.state.settings
    lifecycle = request.headers.get("x-fal-object-lifecycle") or request.headers.get(
        "x-fal-object-lifecycle-preference"
    )
    _, ttl_s = lifecycle_ttl_s(lifecycle)
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


async def _receive_to(request: Request, path: Path, limit: int) -> str:
    """Stream the request body to ``path``; returns its MD5 hex (the part etag)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    async with await anyio.open_file(path, "wb") as handle:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"Upload larger than {limit} bytes")
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
        await _receive_to(request, staged, request.app.state.settings.max_upload_bytes)
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
            content_type=pending["content_type"] or content_type or "application/octet-stream",
            owner=pending["owner"],
            ttl_s=pending.get("ttl_s"),
            token=pending["file_token"],
        )

    meta = await anyio.to_thread.run_sync(commit)
    await request.app.state.redis.delete(Keys(settings.key_prefix).upload(upload_token))
    return meta


def _part_dir(storage: LocalStorage, upload_token: str) -> Path:
    folder = storage.staging / f"parts-{upload_token}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@router.put("/storage/upload/{upload_token}/{part_number}", response_model=UploadPart, summary="Upload one part")
async def put_part(
    upload_token: str,
    part_number: int,
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
) -> UploadPart:
    await _pending(request, upload_token)
    folder = await anyio.to_thread.run_sync(_part_dir, storage, upload_token)
    etag = await _receive_to(request, folder / str(part_number), request.app.state.settings.max_upload_bytes)
    return UploadPart(partNumber=part_number, etag=etag)


@router.post("/storage/upload/{upload_token}/complete", summary="Assemble a multipart upload")
async def complete_multipart(
    upload_token: str,
    body: UploadComplete,
    request: Request,
    storage: Annotated[LocalStorage, Depends(storage_of)],
) -> JSONResponse:
    pending = await _pending(request, upload_token)
    folder = _part_dir(storage, upload_token)
    numbers = [p.partNumber for p in body.parts] or sorted(int(p.name) for p in folder.iterdir())

    def assemble() -> Path:
        staged = storage.new_staged_path()
        with open(staged, "wb") as out:
            for n in numbers:
                with open(folder / str(n), "rb") as part:
                    out.write(part.read())
        for item in folder.iterdir():
            os.unlink(item)
        folder.rmdir()
        return staged

    try:
        staged = await anyio.to_thread.run_sync(assemble)
    except OSError as exc:
        raise FileNotFoundError_("Missing upload part") from exc
    meta = await _commit(request, storage, staged, pending, None, upload_token)
    return JSONResponse({"file_url": public_base(request) + meta.url_path, "size": meta.size})
