"""Object storage over HTTP: ``GET /files/...`` and the clients' upload flow (``/storage/upload/...``),
whose sessions are ``server.uploads.UploadService``'s.

``initiate`` returns an ``upload_url`` carrying its own unguessable token (the JS client PUTs to it
with no Authorization) and the final ``file_url``. Multipart: PUT ``{upload_url}/{n}`` per part,
then POST ``{upload_url}/complete``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator

from core.errors import FileNotFoundError_
from core.settings import Settings
from core.storage import LocalStorage, StoredFile, file_url_path
from server.auth import Caller, authenticate
from server.deps import settings_of, storage_of, upload_service
from server.file_types import MAX_CONTENT_TYPE_CHARS, OCTET_STREAM, download_headers, is_valid_content_type
from server.json_bodies import JsonBoundedRoute
from server.object_lifecycle import LIFECYCLE_PREFERENCE_HEADER, UPLOAD_LIFECYCLE_HEADER, parse_object_lifecycle
from server.uploads import UploadService
from server.urls import urls_of

router = APIRouter(tags=["storage"], route_class=JsonBoundedRoute)


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
    # With files_require_key the caller is authenticated before the file is looked up: 401 for a missing or
    # invalid key whether the file exists or not, 404 for a file of another key as for an unknown one.
    caller = await authenticate(request) if settings.files_require_key else None
    found = await anyio.to_thread.run_sync(storage.lookup, token, file_name)
    if found is None:
        raise FileNotFoundError_()
    meta, path = found
    if caller is not None and caller.key_id != meta.owner:
        raise FileNotFoundError_()
    media_type, headers = download_headers(meta.content_type, meta.file_name)
    return FileResponse(path, media_type=media_type, headers=headers)


def _lifecycle_ttl_s(request: Request) -> int | None:
    """The stored file's lifetime from fal's upload lifecycle header (or the general preference header)."""
    header = UPLOAD_LIFECYCLE_HEADER if UPLOAD_LIFECYCLE_HEADER in request.headers else LIFECYCLE_PREFERENCE_HEADER
    lifecycle = parse_object_lifecycle(request.headers.get(header), header)
    return lifecycle.expiration_duration_seconds if lifecycle else None


async def _initiate(
    request: Request, body: UploadInitiate, caller: Caller, uploads: UploadService, *, multipart: bool
) -> UploadTarget:
    initiated = await uploads.initiate(
        owner=caller.key_id,
        content_type=body.content_type,
        file_name=body.file_name,
        ttl_s=_lifecycle_ttl_s(request),
        multipart=multipart,
    )
    urls = urls_of(request)
    return UploadTarget(
        upload_url=urls.absolute(f"/storage/upload/{initiated.upload_token}"),
        file_url=urls.absolute(file_url_path(initiated.file_token, initiated.file_name)),
    )


@router.post("/storage/upload/initiate", response_model=UploadTarget, summary="Start an upload")
async def initiate_upload(
    body: UploadInitiate,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    uploads: Annotated[UploadService, Depends(upload_service)],
) -> UploadTarget:
    return await _initiate(request, body, caller, uploads, multipart=False)


@router.post("/storage/upload/initiate-multipart", response_model=UploadTarget, summary="Start a multipart upload")
async def initiate_multipart(
    body: UploadInitiate,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    uploads: Annotated[UploadService, Depends(upload_service)],
) -> UploadTarget:
    return await _initiate(request, body, caller, uploads, multipart=True)


def _stored(request: Request, meta: StoredFile) -> JSONResponse:
    """A finished upload's answer: its file's URL, on the same public base as initiate's answer."""
    return JSONResponse({"file_url": urls_of(request).absolute(meta.url_path), "size": meta.size})


def _declared_bytes(request: Request) -> int | None:
    """The body's Content-Length, reserved before the body is read (the server checked it is a number)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


@router.put("/storage/upload/{upload_token}", summary="Upload target (the upload_url)")
async def put_upload(
    upload_token: str,
    request: Request,
    uploads: Annotated[UploadService, Depends(upload_service)],
    content_type: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """The whole file; a second PUT to the same upload gets 409 (the first file is never replaced)."""
    stored = await uploads.receive_file(upload_token, request.stream(), content_type, _declared_bytes(request))
    return _stored(request, stored)


@router.put("/storage/upload/{upload_token}/{part_number}", response_model=UploadPart, summary="Upload one part")
async def put_part(
    upload_token: str,
    part_number: Annotated[int, PathParam(ge=1, le=MAX_UPLOAD_PARTS)],
    request: Request,
    uploads: Annotated[UploadService, Depends(upload_service)],
) -> UploadPart:
    """Parts of one upload together, sent one after the other or in parallel, stay within
    ``max_upload_bytes``; a part replaces its earlier copy."""
    etag = await uploads.receive_part(upload_token, part_number, request.stream(), _declared_bytes(request))
    return UploadPart(partNumber=part_number, etag=etag)


class KnownUploadRoute(JsonBoundedRoute):
    """The completion's route: its upload token is checked (404 when it names no upload) before its body
    is even parsed, so no body of an unknown token is looked at."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def token_first(request: Request) -> Response:
            uploads: UploadService = request.app.state.uploads
            await uploads.check_known(request.path_params["upload_token"])
            return await handler(request)

        return token_first


async def complete_multipart(
    upload_token: str,
    body: UploadComplete,
    request: Request,
    uploads: Annotated[UploadService, Depends(upload_service)],
) -> JSONResponse:
    """One completion wins: another one gets 409 while it runs, and the same answer after it."""
    meta = await uploads.complete(upload_token, [part.partNumber for part in body.parts])
    return _stored(request, meta)


router.add_api_route(
    "/storage/upload/{upload_token}/complete",
    complete_multipart,
    methods=["POST"],
    summary="Assemble a multipart upload",
    route_class_override=KnownUploadRoute,
)
