"""FastAPI dependencies that fetch the per-app service objects from ``app.state``."""

from __future__ import annotations

from fastapi import Request

from server.queue.api_store import JobStore
from server.queue.records import Keys
from server.settings import Settings
from server.shutdown import Drain
from server.storage import LocalStorage
from server.webhook_signing import WebhookSigner


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


def drain_of(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


def storage_of(request: Request) -> LocalStorage:
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
