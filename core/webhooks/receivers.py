"""Who receives a webhook, for the per-receiver cap: its origin (scheme, host, port), and the slots each
receiver may hold at once in one process.

The cap is what keeps one slow or hostile receiver from holding every delivery slot of a process:
its webhooks wait (postponed in the outbox, no attempt counted) while it holds
``webhook_concurrency_per_host`` attempts, and everyone else's go on.
"""

from __future__ import annotations

from collections import Counter

from core.webhooks.targets import WebhookTargetError, default_port, parse_webhook_url


def receiver_of(url: str) -> str:
    """``scheme://host:port`` of a webhook URL (host lower-cased, the default port made explicit); an
    unparsable URL is its own receiver (its attempt is refused at once anyway)."""
    try:
        parts = parse_webhook_url(url)
    except WebhookTargetError:
        return url
    scheme = parts.scheme.lower()
    return f"{scheme}://{(parts.hostname or '').lower()}:{parts.port or default_port(parts)}"


class ReceiverSlots:
    """Attempts in flight per receiver, at most ``per_receiver`` each (one event loop's; not thread-safe)."""

    def __init__(self, per_receiver: int) -> None:
        self.per_receiver = per_receiver
        self._in_flight: Counter[str] = Counter()

    def take(self, receiver: str) -> bool:
        """Take a slot of ``receiver``; False when it holds all of its own."""
        if self._in_flight[receiver] >= self.per_receiver:
            return False
        self._in_flight[receiver] += 1
        return True

    def give_back(self, receiver: str) -> None:
        self._in_flight[receiver] -= 1
        if self._in_flight[receiver] <= 0:
            del self._in_flight[receiver]

    def in_flight(self, receiver: str) -> int:
        return self._in_flight[receiver]
