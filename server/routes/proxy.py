"""``/api/fal/proxy``: the ``x-fal-target-url`` convention of fal's JS client, as an internal dispatcher.

The target's host picks the API (``queue.*`` -> queue routes, ``fal.run`` -> run routes,
``rest.fal.ai`` -> storage routes, our own host -> as is); the request is then re-dispatched through
this same application with the target's path and query, so the very same handlers answer, with the
caller's own headers (Authorization included), and responses (SSE too) stream straight back.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from core.errors import BadRequestError
from server.error_handlers import send_error
from server.middleware import header, set_path
from server.urls import QUEUE_PREFIX, QUEUE_PREFIX_STATE

PROXY_PATH = "/api/fal/proxy"
TARGET_HEADER = b"x-fal-target-url"
RUN_HOSTS = ("fal.run", "falrun.com")
REST_HOSTS = ("rest.fal.ai", "rest.alpha.fal.ai")


def own_hosts(scope: Scope) -> set[str]:
    names = {header(scope, b"host"), header(scope, b"x-forwarded-host")}
    hosts = {n.split(",")[0].strip().lower() for n in names if n}
    return hosts | {h.split(":")[0] for h in hosts}


def target_path(target: str, scope: Scope) -> tuple[str, bytes] | None:
    """(path in this app, query) for an allowed target URL, else None (unparsable, not http(s), foreign)."""
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError:  # e.g. "http://[::1": an unterminated IPv6 literal
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    netloc = parts.netloc.lower()
    path = parts.path or "/"
    ours = own_hosts(scope)
    if host.startswith("queue."):
        path = path if path.startswith(QUEUE_PREFIX + "/") else QUEUE_PREFIX + path
    elif not (host in RUN_HOSTS or host in REST_HOSTS or netloc in ours or host in ours):
        return None
    if path.rstrip("/") == PROXY_PATH:
        return None
    return path, parts.query.encode()


class ProxyDispatcher:
    """ASGI endpoint for GET/POST/PUT ``/api/fal/proxy``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = header(scope, TARGET_HEADER)
        if not target:
            await send_error(BadRequestError("Invalid request: missing x-fal-target-url header"), scope, receive, send)
            return
        resolved = target_path(target, scope)
        if resolved is None:
            refused = BadRequestError("Invalid request: target URL is not an allowed fal host")
            await send_error(refused, scope, receive, send)
            return
        path, query = resolved
        inner: Scope = dict(scope)
        inner["state"] = {QUEUE_PREFIX_STATE: QUEUE_PREFIX}
        inner["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != TARGET_HEADER]
        set_path(inner, path, query)
        await scope["app"](inner, receive, send)
