"""``Authorization: Key <credentials>`` parsing and the dependency returning the caller's key id.

Credentials are either an opaque key (``FAL_KEY``) or ``key_id:key_secret``; both are matched as a
whole against ``Settings.api_keys``. The owner id stored on requests is ``key_id`` for the second
form and a hash prefix for the first, so keys themselves never reach Redis or the logs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from core.errors import AuthenticationError

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the owner id used for request and file visibility."""

    key_id: str


def key_id_for(credentials: str) -> str:
    """Owner id of a credential: the key id of ``id:secret``, else a SHA-256 prefix of the key."""
    if ":" in credentials:
        return "id:" + credentials.split(":", 1)[0]
    return "key:" + hashlib.sha256(credentials.encode()).hexdigest()[:16]


def parse_authorization(header: str | None) -> str:
    """The credentials of a ``Key`` Authorization header; raises ``AuthenticationError`` otherwise."""
    if not header or not header.strip():
        raise AuthenticationError("Missing Authorization header: expected 'Key <your key>'")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "key":
        raise AuthenticationError("Unsupported authorization scheme: expected 'Key <your key>'")
    credentials = credentials.strip()
    if not credentials:
        raise AuthenticationError("Missing key after 'Key'")
    return credentials


class KeyRing:
    """The configured keys; with none configured every caller is the same anonymous owner."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = {hashlib.sha256(k.encode()).digest(): key_id_for(k) for k in keys}

    @property
    def is_open(self) -> bool:
        return not self._digests

    def authenticate(self, header: str | None) -> Caller:
        if self.is_open:
            return Caller(ANONYMOUS)
        credentials = parse_authorization(header)
        digest = hashlib.sha256(credentials.encode()).digest()
        for known, key_id in self._digests.items():
            if hmac.compare_digest(known, digest):
                return Caller(key_id)
        raise AuthenticationError("No user found for Key ID and Secret")


def caller_of(request: Request) -> Caller:
    """The caller of this request, or 401 ``{"detail": ...}``."""
    keyring: KeyRing = request.app.state.keyring
    return keyring.authenticate(request.headers.get("authorization"))


async def authenticate(request: Request) -> Caller:
    """FastAPI dependency: ``caller_of`` (async: FastAPI would run a plain function in a thread)."""
    return caller_of(request)
