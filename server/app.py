"""``create_app(settings)``: Redis clients, storage, routers, middlewares, exception handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.auth import KeyRing
from server.error_handlers import fal_error_handler, redis_unavailable_handler, unexpected_error_handler
from server.errors import FalError
from server.middleware import BodyLimitMiddleware, RequestIdMiddleware, RoutingMiddleware
from server.queue.api_store import JobStore
from server.queue.redis_options import async_redis_options, redis_client_options
from server.queue.webhook_outbox import WebhookDispatcher, build_outbox
from server.routes import files, ops, queue, run
from server.routes.proxy import PROXY_PATH, ProxyDispatcher
from server.settings import Settings
from server.shutdown import Drain
from server.storage import LocalStorage

logger = logging.getLogger(__name__)

FILE_JANITOR_INTERVAL_S = 60.0


async def _expire_files(storage: LocalStorage) -> None:
    while True:
        removed = await anyio.to_thread.run_sync(storage.delete_expired)
        if removed:
            logger.info("removed %d expired files", removed)
        await anyio.sleep(FILE_JANITOR_INTERVAL_S)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    outbox_client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_options())
    dispatcher = WebhookDispatcher(build_outbox(outbox_client, settings))
    dispatcher.start()  # webhooks of requests the API completes (cancelled or expired while queued) and any due
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_expire_files, app.state.storage)
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()
    await anyio.to_thread.run_sync(dispatcher.stop)
    outbox_client.close()
    await app.state.redis.aclose()
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
    )
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)
    app.state.redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, **async_redis_options())
    # bytes, not str: RQ pickles job data
    app.state.sync_redis = redis.Redis.from_url(settings.redis_url, **redis_client_options())
    app.state.jobs = JobStore(app.state.redis, settings)
    app.state.drain = Drain(settings.shutdown_grace_s)  # begun by server.__main__ on SIGTERM
    app.state.storage = LocalStorage(settings.storage_dir, settings.default_file_ttl_s)

    app.add_exception_handler(FalError, fal_error_handler)
    app.add_exception_handler(redis.ConnectionError, redis_unavailable_handler)
    app.add_exception_handler(redis.TimeoutError, redis_unavailable_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)

    app.include_router(ops.router)
    app.include_router(files.router)
    # An ASGI app as the endpoint (Starlette routes non-functions as ASGI apps; its stub wants a function).
    proxy: Any = ProxyDispatcher()
    app.router.add_route(PROXY_PATH, proxy, methods=["GET", "POST", "PUT"], include_in_schema=False)
    app.include_router(queue.router)
    app.include_router(run.router)  # last: its POST /{endpoint_id:path} catches what is left

    app.add_middleware(RoutingMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_allow_origins,
        allow_methods=["GET", "POST", "PUT", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type", "x-fal-request-timeout-type"],
    )
    return app
