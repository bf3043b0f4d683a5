"""FastAPI dependencies that fetch the per-app service objects from ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and
that hop cost more than everything else a status call does.
"""

from __future__ import annotations

from fastapi import Request

from server.change_feed import ChangeFeed
from server.health import HealthCheck
from server.queue.api_store import JobStore
from server.queue.records import Keys
from server.settings import Settings
from server.shutdown import Drain
from server.status_cache import QueueSnapshot, StatusReader
from server.storage import LocalStorage
from server.webhook_signing import WebhookSigner


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


async def drain_of(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def change_feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.change_feed
    return feed


async def health_check(request: Request) -> HealthCheck:
    check: HealthCheck = request.app.state.health
    return check


async def status_reader(request: Request) -> StatusReader:
    reader: StatusReader = request.app.state.status_reader
    return reader


async def queue_snapshot(request: Request) -> QueueSnapshot:
    snapshot: QueueSnapshot = request.app.state.queue_snapshot
    return snapshot


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
