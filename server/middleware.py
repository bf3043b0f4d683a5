"""Pure ASGI middlewares: request-id header, body-size limit, and host/prefix routing.

Pure ASGI (not BaseHTTPMiddleware) so that server-sent events stream through untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import REQUEST_ID_HEADER, PayloadTooLargeError
from server.error_handlers import send_error
from server.request_ids import response_request_id
from server.urls import QUEUE_PREFIX, QUEUE_PREFIX_STATE, is_host

# Paths that are the same on every host (never rewritten to the queue API).
SHARED_PATH_PREFIXES = (
    "/files/",
    "/storage/",
    "/health",
    "/metrics",
    "/api/",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/playground/",
)
# Upload bodies (PUT) are streamed to disk with their own limit.
UNLIMITED_BODY_PREFIXES = ("/storage/upload/",)


def set_path(scope: Scope, path: str, query: bytes | None = None) -> None:
    scope["path"] = path
    scope["raw_path"] = path.encode()
    if query is not None:
        scope["query_string"] = query


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class HttpMiddleware(ABC):
    """A pure ASGI middleware that acts on HTTP exchanges (``handle``) and passes anything else
    (lifespan, websockets) straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP exchange (each subclass's own work, then ``self.app``)."""


class RoutingMiddleware(HttpMiddleware):
    """Strip trailing slashes (no redirects) and map a ``queue.*`` host onto the ``/queue`` routes."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        if QUEUE_PREFIX_STATE not in state:
            forwarded = (header(scope, b"x-forwarded-host") or "").split(",")[0].strip()
            host = forwarded if is_host(forwarded) else (header(scope, b"host") or "")  # as ``public_base``
            is_shared = path.startswith(SHARED_PATH_PREFIXES) or path in ("/queue", "/")
            if host.lower().startswith("queue.") and not is_shared and not path.startswith(QUEUE_PREFIX + "/"):
                state[QUEUE_PREFIX_STATE] = ""
                path = QUEUE_PREFIX + path
            else:
                state[QUEUE_PREFIX_STATE] = QUEUE_PREFIX
        set_path(scope, path)
        await self.app(scope, receive, send)


class RequestIdMiddleware(HttpMiddleware):
    """Every response carries ``x-fal-request-id``: the request it is about, else a fresh id
    (``server.request_ids``)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == REQUEST_ID_HEADER.encode() for k, _ in headers):
                    headers.append((REQUEST_ID_HEADER.encode(), response_request_id(scope).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware(HttpMiddleware):
    """413 for bodies over ``max_body_bytes`` (by Content-Length, or counted while buffering)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "PUT" and scope["path"].startswith(UNLIMITED_BODY_PREFIXES):
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = PayloadTooLargeError(f"Request body larger than {self.max_body_bytes} bytes")
        await send_error(too_large, scope, receive, send)
