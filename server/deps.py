"""FastAPI dependencies that fetch the per-app service objects from ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and
that hop cost more than everything else a status call does. The two hottest routes (status poll,
submit) resolve none at all: they read ``app.state`` themselves.
"""

from __future__ import annotations

from fastapi import Request

from core.requests.api_store import RequestStore
from core.requests.records import Keys
from core.settings import Settings
from core.storage import LocalStorage
from core.webhooks.signing import WebhookSigner
from server.health import HealthCheck
from server.requests_service import RequestService
from server.shutdown import Drain
from server.status_stream import StatusStream
from server.uploads import UploadService


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def request_store(request: Request) -> RequestStore:
    store: RequestStore = request.app.state.request_store
    return store


async def drain_of(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def health_check(request: Request) -> HealthCheck:
    check: HealthCheck = request.app.state.health
    return check


async def request_service(request: Request) -> RequestService:
    service: RequestService = request.app.state.requests
    return service


async def status_stream(request: Request) -> StatusStream:
    streams: StatusStream = request.app.state.status_stream
    return streams


async def upload_service(request: Request) -> UploadService:
    uploads: UploadService = request.app.state.uploads
    return uploads


async def storage_of(request: Request) -> LocalStorage:
    storage: LocalStorage = request.app.state.storage
    return storage


def webhook_signer(request: Request) -> WebhookSigner:
    """The deployment's webhook signer (read from Redis once; FastAPI runs this sync dependency in a thread)."""
    state = request.app.state
    signer: WebhookSigner | None = getattr(state, "webhook_signer", None)
    if signer is None:
        signer = WebhookSigner.shared(state.sync_redis, Keys(state.settings.key_prefix))
        state.webhook_signer = signer
    return signer
