"""Absolute URLs built from the incoming request (X-Forwarded-Proto/Host honoured).

The queue API is public either at the root of a ``queue.*`` host or under ``/queue``; the routing
middleware records which one in ``scope["state"]["queue_prefix"]`` and URLs repeat it, so a client
keeps talking the way it started.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from fastapi import Request

logger = logging.getLogger(__name__)

QUEUE_PREFIX = "/queue"
QUEUE_PREFIX_STATE = "queue_prefix"


def _first(value: str | None) -> str | None:
    if not value:
        return None
    first = value.split(",")[0].strip()
    return first or None


MAX_HOST_LENGTH = 255  # a DNS name (253) or a bracketed IPv6 address, with a port
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
_PROTOS = ("http", "https")


def is_host(value: str) -> bool:
    """A host name or address, with an optional port, of bounded length."""
    return len(value) <= MAX_HOST_LENGTH and _HOST.fullmatch(value) is not None


def valid_host(value: str | None, header: str) -> str | None:
    """``value`` if it is a host name or address (with an optional port) of bounded length, else None
    (logged): a forwarded or Host header ends up in every URL the server answers and stores."""
    if not value:
        return None
    if is_host(value):
        return value
    logger.warning("ignored an invalid %s header (%d characters): %r", header, len(value), value[:64])
    return None


def valid_proto(value: str | None) -> str | None:
    """``http`` or ``https`` (any case) from X-Forwarded-Proto, else None (logged)."""
    if not value:
        return None
    if value.lower() in _PROTOS:
        return value.lower()
    logger.warning("ignored an invalid x-forwarded-proto header (%d characters): %r", len(value), value[:64])
    return None


def public_base(request: Request, override: str | None = None) -> str:
    """``scheme://host[:port]`` as the client sees this server; X-Forwarded-Proto/Host (and Host) that
    are not a scheme and a host name are ignored."""
    if override:
        return override.rstrip("/")
    headers = request.headers
    scheme = valid_proto(_first(headers.get("x-forwarded-proto"))) or request.scope.get("scheme", "http")
    host = valid_host(_first(headers.get("x-forwarded-host")), "x-forwarded-host") or valid_host(
        headers.get("host"), "host"
    )
    if not host:
        server = request.scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scheme}://{host}"


@dataclass(frozen=True)
class Urls:
    """URL builder for one incoming request."""

    base: str
    queue_prefix: str

    @property
    def queue_base(self) -> str:
        return self.base + self.queue_prefix

    def response_url(self, endpoint_id: str, request_id: str) -> str:
        """Where a request of ``endpoint_id`` (an app id, or one with a sub-path) answers its result."""
        return f"{self.queue_base}/{app_id_of(endpoint_id)}/requests/{request_id}"

    def request_urls(self, endpoint_id: str, request_id: str) -> dict[str, str]:
        """The three ``RequestUrls`` fields of a request, as a plain dict (the submit and status hot paths)."""
        response_url = self.response_url(endpoint_id, request_id)
        return {
            "response_url": response_url,
            "status_url": f"{response_url}/status",
            "cancel_url": f"{response_url}/cancel",
        }

    def absolute(self, path: str) -> str:
        """``path`` (``/files/...``, ``/storage/upload/...``) on this server's public base."""
        return self.base + path


def urls_of(request: Request) -> Urls:
    """The URL builder for this request."""
    settings = request.app.state.settings
    prefix = request.scope.get("state", {}).get(QUEUE_PREFIX_STATE, QUEUE_PREFIX)
    return Urls(base=public_base(request, settings.public_base_url), queue_prefix=prefix)


async def request_urls(request: Request) -> Urls:
    """FastAPI dependency: ``urls_of`` (async: FastAPI would run a plain function in a thread)."""
    return urls_of(request)


def app_id_of(endpoint_id: str) -> str:
    """``[ns/]owner/alias`` of an endpoint id (status/result/cancel URLs drop the sub-path); an app id
    is its own app id."""
    parts = [p for p in endpoint_id.split("/") if p]
    keep = 3 if parts and parts[0] in ("workflows", "comfy") else 2
    return "/".join(parts[:keep])
