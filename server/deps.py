"""FastAPI dependencies that fetch the per-app service objects from ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and
that hop cost more than everything else a status call does. The two hottest routes (status poll,
submit) resolve none at all: they read ``app.state`` themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from core.requests.records import Keys
from core.webhooks.signing import WebhookSigner


def from_app_state(attribute: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency answering ``app.state.<attribute>``, an object ``server.app.create_app`` built."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = f"{attribute}_of_app"
    return dependency


settings_of = from_app_state("settings")  # core.settings.Settings
request_store = from_app_state("request_store")  # core.requests.api_store.RequestStore
drain_of = from_app_state("drain")  # server.shutdown.Drain
health_check = from_app_state("health")  # server.health.HealthCheck
request_service = from_app_state("requests")  # server.requests_service.RequestService
status_stream = from_app_state("status_stream")  # server.status_stream.StatusStream
upload_service = from_app_state("uploads")  # server.uploads.UploadService
storage_of = from_app_state("storage")  # core.storage.LocalStorage
background_loops = from_app_state("loops")  # server.supervised_loops.LoopSupervisor


def webhook_signer(request: Request) -> WebhookSigner:
    """The deployment's webhook signer (read from Redis once; FastAPI runs this sync dependency in a thread)."""
    state = request.app.state
    signer: WebhookSigner | None = getattr(state, "webhook_signer", None)
    if signer is None:
        signer = WebhookSigner.shared(state.sync_redis, Keys(state.settings.key_prefix))
        state.webhook_signer = signer
    return signer
