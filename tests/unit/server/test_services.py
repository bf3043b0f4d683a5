"""The services the routes call, without HTTP: ``RequestService``'s checks and cancel answers, and
``UploadService``'s sessions on a real Redis and storage folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from core.errors import EndpointNotFoundError, FileNotFoundError_, PayloadTooLargeError, RequestNotFoundError
from core.protocol import CancelResponse
from core.requests.api_store import RequestStore
from core.requests.records import Keys
from core.schemas import BitDanceInput
from core.settings import Settings
from core.storage import LocalStorage
from server.change_feed import ChangeFeed
from server.requests_service import RequestService
from server.shutdown import Drain
from server.status_cache import StatusReader
from server.uploads import UploadService

RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"


def request_service(settings: Settings, client: aioredis.Redis) -> RequestService:
    store = RequestStore(client, settings)
    reader = StatusReader(store, ChangeFeed(client, Keys(settings.key_prefix)))
    return RequestService(settings, store, reader, Drain(1.0), redis.Redis.from_url(settings.redis_url))


def test_cancel_answers_carry_their_status_codes() -> None:
    assert CancelResponse(status="CANCELLATION_REQUESTED").status_code == 202
    assert CancelResponse(status="ALREADY_COMPLETED").status_code == 400
    assert CancelResponse(status="NOT_FOUND").status_code == 404


def test_checks_before_redis(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    service = request_service(settings, aioredis.Redis.from_url(settings.redis_url, decode_responses=True))
    service.check_endpoint("fal-ai/bitdance/")
    service.check_request("fal-ai/bitdance", RID)
    with pytest.raises(EndpointNotFoundError, match="'fal-ai/other' not found"):
        service.check_endpoint("fal-ai/other")
    with pytest.raises(EndpointNotFoundError):
        service.check_request("fal-ai/other", RID)
    with pytest.raises(RequestNotFoundError):
        service.check_request("fal-ai/bitdance", "not-an-id")


def test_submit_then_cancel_twice_then_unknown(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()

    async def go() -> list[str]:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            service = request_service(settings, client)
            submitted = await service.submit(BitDanceInput(prompt="a fox"), owner="o", files_base="http://f")
            assert submitted.queue_position == 0
            answers = [
                await service.cancel(submitted.request_id, "someone-else"),
                await service.cancel(submitted.request_id, "o"),
                await service.cancel(submitted.request_id, "o"),
                await service.cancel(RID, "o"),
                await service.cancel("not-an-id", "o"),
            ]
            return [answer.status for answer in answers]
        finally:
            await client.aclose()

    assert asyncio.run(go()) == ["NOT_FOUND", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND", "NOT_FOUND"]


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_upload_sessions(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(max_upload_bytes=10)

    async def go() -> None:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            uploads = UploadService(client, LocalStorage(tmp_path / "files"), settings)
            single = await uploads.initiate(
                owner="o", content_type="text/plain", file_name="a.txt", ttl_s=None, multipart=False
            )
            stored = await uploads.receive_file(single.upload_token, chunks_of(b"hello", b" you"), "image/png")
            assert (stored.token, stored.file_name, stored.size) == (single.file_token, "a.txt", 9)
            assert stored.content_type == "text/plain"  # initiate's type wins over the PUT's
            with pytest.raises(FileNotFoundError_):  # the session ends with its file
                await uploads.pending(single.upload_token)

            multi = await uploads.initiate(
                owner="o", content_type="text/plain", file_name=None, ttl_s=60, multipart=True
            )
            assert await uploads.receive_part(multi.upload_token, 2, chunks_of(b"world")) == (
                "7d793037a0760186574b0282f2f435e7"  # the part's MD5
            )
            await uploads.receive_part(multi.upload_token, 1, chunks_of(b"hi "))
            with pytest.raises(PayloadTooLargeError):  # parts together stay within max_upload_bytes
                await uploads.receive_part(multi.upload_token, 3, chunks_of(b"!!!"))
            joined = await uploads.complete(multi.upload_token, [])
            assert joined.size == 8 and joined.expires_at is not None
            with pytest.raises(FileNotFoundError_):
                await uploads.pending("not-a-token")
        finally:
            await client.aclose()

    asyncio.run(go())
