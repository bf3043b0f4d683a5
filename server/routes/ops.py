"""Operations: ``/health``, ``/metrics``, the webhook JWKS and fal's per-endpoint OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema

from core.errors import EndpointNotFoundError
from core.protocol import QueueStatus
from core.requests.api_store import RequestStore
from core.schemas import BitDanceInput, BitDanceOutput
from core.settings import Settings
from core.webhooks.signing import WebhookSigner
from server import metrics
from server.auth import authenticate
from server.deps import background_loops, drain_of, health_check, request_store, settings_of, webhook_signer
from server.health import HealthCheck
from server.http_limits import TRACKER_STATE_KEY, ConnectionTracker
from server.json_response import FastJSONResponse
from server.shutdown import Drain
from server.supervised_loops import LoopSupervisor
from server.urls import Urls, request_urls

router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    summary="Redis reachable, workers alive, background loops running (200), else 503 (also while shutting down)",
)
async def health(
    check: Annotated[HealthCheck, Depends(health_check)],
    drain: Annotated[Drain, Depends(drain_of)],
    loops: Annotated[LoopSupervisor, Depends(background_loops)],
) -> JSONResponse:
    """What Redis says is at most a second old (``server.health``); shutting down is reported at once.

    ``workers``: how many are alive; ``live_workers``: each one's name, device and loaded ``model``
    (``name``, ``path``, ``variant``, ``parallel_num``, ``random``: the tiny random checkpoint, whose
    images are noise; ``simulated``: a simulated model); ``loops_down``: the API's background loops
    that cannot run now, each with its last error (only when there are any)."""
    current = await check.current()
    down = loops.down()
    healthy = current.is_healthy and not drain.is_draining and not down
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "redis": current.redis_ok}
    body["workers"] = current.workers
    body["live_workers"] = [dict(worker) for worker in current.live_workers]
    if down:
        body["loops_down"] = down
    if drain.is_draining:
        body["shutting_down"] = True
    return FastJSONResponse(body, status_code=200 if healthy else 503)


@router.get("/health/live", summary="The API process answers (liveness; touches nothing else)")
async def health_live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/health/ready",
    summary="Redis reachable and the background loops running: requests are accepted (200), else 503 "
    "(also while shutting down)",
)
async def health_ready(
    store: Annotated[RequestStore, Depends(request_store)],
    drain: Annotated[Drain, Depends(drain_of)],
    loops: Annotated[LoopSupervisor, Depends(background_loops)],
) -> JSONResponse:
    """Readiness of this API replica; unlike ``/health`` it does not wait for a worker (requests queue).
    ``loops_down`` names the background loops that cannot run (file expiry, the change feed that wakes
    status streams, ...) with their last error; each is being restarted with backoff meanwhile."""
    try:
        await store.client.ping()
        redis_ok = True
    except redis.RedisError:
        redis_ok = False
    down = loops.down()
    ready = redis_ok and not drain.is_draining and not down
    body: dict[str, Any] = {"status": "ok" if ready else "unavailable", "redis": redis_ok}
    if down:
        body["loops_down"] = down
    if drain.is_draining:
        body["shutting_down"] = True
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/.well-known/jwks.json", summary="Public keys that verify this server's webhook signatures")
async def webhook_jwks(signer: Annotated[WebhookSigner, Depends(webhook_signer)]) -> JSONResponse:
    return JSONResponse({"keys": [signer.jwk()]}, headers={"Cache-Control": "public, max-age=300"})


@router.get("/metrics", summary="Prometheus metrics (with a key when BITDANCE_METRICS_REQUIRE_KEY holds)")
async def prometheus_metrics(
    request: Request,
    store: Annotated[RequestStore, Depends(request_store)],
    settings: Annotated[Settings, Depends(settings_of)],
) -> Response:
    if settings.is_metrics_keyed:
        await authenticate(request)
    tracker: ConnectionTracker | None = request.scope.get("state", {}).get(TRACKER_STATE_KEY)
    snapshot = metrics.Snapshot(
        queue_depth=await store.queue_depth(),
        by_status=await store.status_counts(),
        stats=await store.stats(),
        workers_alive=await store.alive_workers(),
        webhook_backlog=await store.webhook_backlog(),
        http_refusals=dict(tracker.counts()) if tracker else {},
        http_connections=len(tracker.connections) if tracker else None,
    )
    return Response(metrics.render(snapshot), media_type=metrics.CONTENT_TYPE)


def endpoint_openapi(endpoint_id: str, queue_base: str) -> dict[str, Any]:
    """fal's ``/api/openapi/queue/openapi.json`` document for our endpoint, from the pydantic models."""
    _, schema = models_json_schema(
        [(BitDanceInput, "validation"), (BitDanceOutput, "serialization"), (QueueStatus, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = schema.get("$defs", {})

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def json_body(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": ref(name)}}}

    rid = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    requests_path = f"/{endpoint_id}/requests/{{request_id}}"
    return {
        "openapi": "3.0.4",
        "info": {
            "title": f"Queue OpenAPI for {endpoint_id}",
            "version": "1.0.0",
            "x-fal-metadata": {"endpointId": endpoint_id, "category": "text-to-image"},
        },
        "servers": [{"url": queue_base}],
        "components": {"schemas": schemas},
        "paths": {
            f"/{endpoint_id}": {
                "post": {"requestBody": {"required": True, **json_body("BitDanceInput")}, "responses": {}}
            },
            requests_path: {
                "get": {
                    "parameters": [rid],
                    "responses": {"200": {"description": "Output", **json_body("BitDanceOutput")}},
                }
            },
            f"{requests_path}/status": {
                "get": {
                    "parameters": [rid],
                    "responses": {"200": {"description": "Status", **json_body("QueueStatus")}},
                }
            },
            f"{requests_path}/cancel": {
                "put": {"parameters": [rid], "responses": {"202": {"description": "Cancelling"}}}
            },
        },
    }


@router.get("/api/openapi/queue/openapi.json", summary="fal's per-endpoint OpenAPI document")
async def queue_openapi(
    settings: Annotated[Settings, Depends(settings_of)],
    urls: Annotated[Urls, Depends(request_urls)],
    endpoint_id: Annotated[str, Query()] = "",
) -> JSONResponse:
    wanted = endpoint_id or settings.endpoint_id
    if wanted != settings.endpoint_id:
        raise EndpointNotFoundError(f"Application '{wanted}' not found")
    return JSONResponse(endpoint_openapi(wanted, urls.base + "/queue"))
