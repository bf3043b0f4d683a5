"""Webhook signatures as fal makes them, with this deployment's own Ed25519 key.

fal signs every webhook: ``X-Fal-Webhook-Signature`` is the hex Ed25519 signature of the four lines
``request_id``, ``user_id``, ``timestamp`` and the hex SHA-256 of the raw body, joined with ``\\n``,
and receivers verify it against published public keys (JWKS). A private server cannot sign as fal,
so it signs the same way with its own key and publishes that key at ``/.well-known/jwks.json``:
receivers verify exactly as for fal, with our JWKS URL instead of fal's.

The key lives in Redis (created by the first process that needs it), so the API and every worker
on every host sign with the same key; it persists with Redis' append-only file.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.requests.records import Keys, as_str


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


class WebhookSigner:
    """Signs webhook deliveries; :meth:`jwk` is the public half for the JWKS document."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def shared(cls, client: redis.Redis, keys: Keys) -> WebhookSigner:
        """The deployment's key: the first process to ask creates it, every other one reads it."""
        candidate = Ed25519PrivateKey.generate().private_bytes_raw().hex()
        client.set(keys.webhook_signing_key, candidate, nx=True)
        stored = client.get(keys.webhook_signing_key)
        if stored is None:
            raise RuntimeError("webhook signing key vanished from Redis right after being written")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(as_str(stored))))

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_bytes).hexdigest()[:16]

    def headers(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> dict[str, str]:
        signature = self._private_key.sign(signed_message(request_id, user_id, timestamp, body))
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    def jwk(self) -> dict[str, Any]:
        x = base64.urlsafe_b64encode(self.public_bytes).rstrip(b"=").decode()
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.key_id, "alg": "EdDSA", "use": "sig"}


def verify(jwks: dict[str, Any], headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: check the signature against any key of the JWKS document."""
    message = signed_message(
        headers["X-Fal-Webhook-Request-Id"],
        headers["X-Fal-Webhook-User-Id"],
        headers["X-Fal-Webhook-Timestamp"],
        body,
    )
    signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    for key in jwks.get("keys", []):
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):  # another key, or a malformed one: try the next
            continue
    return False
