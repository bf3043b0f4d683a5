"""``create_app(settings)``: Redis clients, storage, routers, middlewares, exception handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from core.errors import FalError
from core.redis_options import async_redis_options, redis_client_options
from core.requests.api_store import RequestStore
from core.requests.records import Keys
from core.settings import Settings
from core.storage import LocalStorage
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import build_outbox
from server.auth import KeyRing
from server.change_feed import RECONNECT_DELAY_MAX_S, RECONNECT_DELAY_S, ChangeFeed
from server.error_handlers import (
    fal_error_handler,
    redis_unavailable_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from server.health import HealthCheck
from server.middleware import BodyLimitMiddleware, RequestIdMiddleware, RoutingMiddleware
from server.requests_service import RequestService
from server.routes import docs, files, ops, playground, queue, run
from server.routes.proxy import PROXY_PATH, ProxyDispatcher
from server.shutdown import Drain
from server.status_cache import QueueSnapshot, StatusReader
from server.status_stream import StatusStream
from server.supervised_loops import LoopStatus, LoopSupervisor, every
from server.uploads import UploadService

logger = logging.getLogger(__name__)

# The names /health/ready gives a background loop that cannot run (server.supervised_loops).
FILE_EXPIRY_LOOP, CHANGE_FEED_LOOP, DRAIN_WAKEUP_LOOP = "file_expiry", "change_feed", "drain_wakeup"
WEBHOOKS_THREAD = "webhooks"
DRAIN_POLL_S = 0.2
API_REDIS_CONNECTIONS = 64
API_REDIS_POOL_WAIT_S = 10.0


async def _expire_files(storage: LocalStorage, upload_ttl_s: float) -> None:
    """One janitor pass: expired files, and staged uploads or part folders untouched for longer than
    an upload lives (abandoned)."""
    removed = await anyio.to_thread.run_sync(storage.delete_expired)
    if removed:
        logger.info("removed %d expired files", removed)
    abandoned = await anyio.to_thread.run_sync(storage.delete_abandoned_staging, upload_ttl_s)
    if abandoned:
        logger.info("removed %d abandoned uploads", abandoned)


async def _wake_streams_on_drain(drain: Drain, feed: ChangeFeed, status: LoopStatus) -> None:
    """Streams sleep until their request changes; when the drain begins (from a signal handler,
    which cannot touch the loop) they are woken once, to end with the grace period."""
    while not drain.is_draining:
        status.ran()
        await anyio.sleep(DRAIN_POLL_S)
    feed.wake_all()


def start_background_loops(app: FastAPI, tasks: anyio.abc.TaskGroup) -> None:
    """The API process's loops, each under ``app.state.loops`` (restarted with backoff when it fails)."""
    settings: Settings = app.state.settings
    loops: LoopSupervisor = app.state.loops
    storage, feed, drain = app.state.storage, app.state.change_feed, app.state.drain
    janitor = partial(_expire_files, storage, settings.upload_ttl_s)
    tasks.start_soon(loops.supervise, FILE_EXPIRY_LOOP, partial(every, settings.file_expiry_interval_s, janitor))
    tasks.start_soon(loops.supervise, CHANGE_FEED_LOOP, feed.run, RECONNECT_DELAY_S, RECONNECT_DELAY_MAX_S)
    tasks.start_soon(loops.supervise, DRAIN_WAKEUP_LOOP, partial(_wake_streams_on_drain, drain, feed))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    outbox_client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_options())
    dispatcher = WebhookDispatcher(build_outbox(outbox_client, settings))
    dispatcher.start()  # webhooks of requests the API completes (cancelled or expired while queued) and any due
    app.state.loops.watch_thread(WEBHOOKS_THREAD, dispatcher)
    async with anyio.create_task_group() as tasks:
        start_background_loops(app, tasks)
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()
    await anyio.to_thread.run_sync(dispatcher.stop)
    outbox_client.close()
    await app.state.redis.aclose()
    await app.state.change_feed_redis.aclose()
    app.state.sync_redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application. Redis connections are opened lazily, so building it needs no server."""
    settings = settings or Settings()
    app = FastAPI(
        title="BitDance (fal-ai/bitdance compatible)",
        description="Self-hosted fal queue, run and storage APIs for BitDance text-to-image.",
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served by server.routes.docs with local assets (no CDN)
        redoc_url=None,
    )
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)
    # A blocking pool: a burst of concurrent commands (200 pollers, thousands of streams woken by a
    # queue move) waits for a free connection instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=API_REDIS_CONNECTIONS,
        timeout=API_REDIS_POOL_WAIT_S,
        **async_redis_options(settings.redis_url),
    )
    app.state.redis = aioredis.Redis.from_pool(pool)
    # bytes, not str: RQ pickles job data
    app.state.sync_redis = redis.Redis.from_url(settings.redis_url, **redis_client_options())
    app.state.request_store = RequestStore(app.state.redis, settings)
    app.state.drain = Drain(settings.shutdown_grace_s)  # begun by server.__main__ on SIGTERM
    app.state.loops = LoopSupervisor()  # the background loops the lifespan runs, and which are down
    app.state.health = HealthCheck(app.state.request_store)
    # Pub/sub gets its own client without retries: a dropped connection must surface, so that the
    # feed reconnects and wakes every stream (see server.change_feed).
    app.state.change_feed_redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    app.state.change_feed = ChangeFeed(app.state.change_feed_redis, Keys(settings.key_prefix))
    app.state.status_reader = StatusReader(app.state.request_store, app.state.change_feed)
    app.state.queue_snapshot = QueueSnapshot(app.state.request_store, app.state.change_feed)
    app.state.storage = LocalStorage(settings.storage_dir, settings.default_file_ttl_s)
    # The services the routes call (fetched through server.deps).
    app.state.requests = RequestService(
        settings, app.state.request_store, app.state.status_reader, app.state.drain, app.state.sync_redis
    )
    app.state.status_stream = StatusStream(
        app.state.request_store, app.state.change_feed, app.state.queue_snapshot, app.state.drain, settings
    )
    app.state.uploads = UploadService(app.state.redis, app.state.storage, settings)

    app.add_exception_handler(FalError, fal_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(redis.ConnectionError, redis_unavailable_handler)
    app.add_exception_handler(redis.TimeoutError, redis_unavailable_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)

    # First: the status poll is the hottest route, and the router tries routes in order (matching the
    # pages, docs and file routes first was a fifth of a status call's CPU). No other route is under /queue.
    app.include_router(queue.router)
    app.include_router(playground.router)
    app.mount(playground.ASSETS_PATH, playground.playground_assets(), name="playground-assets")
    app.include_router(docs.router)
    app.mount(docs.ASSETS_PATH, docs.docs_assets(), name="docs-assets")
    app.include_router(ops.router)
    app.include_router(files.router)
    # An ASGI app as the endpoint (Starlette routes non-functions as ASGI apps; its stub wants a function).
    proxy: Any = ProxyDispatcher()
    app.router.add_route(PROXY_PATH, proxy, methods=["GET", "POST", "PUT"], include_in_schema=False)
    app.include_router(run.router)  # last: its POST /{endpoint_id:path} catches what is left

    app.add_middleware(RoutingMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:  # none by default without keys: no page elsewhere may drive an open server
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-fal-request-id", "x-fal-error-type", "x-fal-request-timeout-type"],
        )
    return app
