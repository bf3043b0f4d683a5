"""Who receives a webhook, for the per-receiver cap: its origin (scheme, host, port), and the delivery
slots each receiver may hold at once in one process.

The cap is what keeps one slow or hostile receiver from holding every delivery slot of a process:
while a receiver holds ``webhook_concurrency_per_host`` attempts, its next webhooks wait in line (a
slot is handed straight to the next in line when an attempt ends, so a fast receiver with a burst
is served at full speed), for at most ``WAIT_MAX_S`` and at most ``WAITING_PER_RECEIVER`` of them;
the others go back to the outbox for a moment, with no attempt counted. Everyone else's webhooks
go on meanwhile.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque

from core.webhooks.targets import WebhookTargetError, default_port, parse_webhook_url

WAITING_PER_RECEIVER = 256
WAIT_MAX_S = 2.5  # half the lease margin: a webhook waiting in line never outlives its lease


def receiver_of(url: str) -> str:
    """``scheme://host:port`` of a webhook URL (host lower-cased, the default port made explicit); an
    unparsable URL is its own receiver (its attempt is refused at once anyway)."""
    try:
        parts = parse_webhook_url(url)
    except WebhookTargetError:
        return url
    scheme = parts.scheme.lower()
    return f"{scheme}://{(parts.hostname or '').lower()}:{parts.port or default_port(parts)}"


class SlotOutcome(enum.Enum):
    TAKEN = "taken"
    LINE_FULL = "line_full"  # the receiver holds its slots and enough webhooks wait in line for it
    WAITED_TOO_LONG = "waited_too_long"


class ReceiverSlots:
    """Attempts in flight per receiver, at most ``per_receiver`` each, and the webhooks waiting in line
    for one (one event loop's; not thread-safe)."""

    def __init__(
        self, per_receiver: int, waiting_per_receiver: int = WAITING_PER_RECEIVER, wait_max_s: float = WAIT_MAX_S
    ) -> None:
        self.per_receiver = per_receiver
        self.waiting_per_receiver = waiting_per_receiver
        self.wait_max_s = wait_max_s
        self._running: Counter[str] = Counter()
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def running_for(self, receiver: str) -> int:
        return self._running[receiver]

    async def take(self, receiver: str) -> SlotOutcome:
        """A slot of ``receiver`` (``TAKEN``: give it back with :meth:`give_back`), waiting in line for it
        when the receiver holds all of its own."""
        if self._running[receiver] < self.per_receiver:
            self._running[receiver] += 1
            return SlotOutcome.TAKEN
        line = self._lines.setdefault(receiver, deque())
        if len(line) >= self.waiting_per_receiver:
            return SlotOutcome.LINE_FULL
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.wait_max_s)
        except asyncio.CancelledError:
            if turn.done():  # handed a slot just as we were cancelled: pass it on
                self.give_back(receiver)
            else:
                self._leave(receiver, turn)
            raise
        if not turn.done():
            self._leave(receiver, turn)
            return SlotOutcome.WAITED_TOO_LONG
        return SlotOutcome.TAKEN  # handed over by give_back: the slot is ours

    def _leave(self, receiver: str, turn: asyncio.Future[None]) -> None:
        turn.cancel()
        line = self._lines.get(receiver)
        if line is not None and turn in line:
            line.remove(turn)
            if not line:
                del self._lines[receiver]

    def give_back(self, receiver: str) -> None:
        """End an attempt: its slot goes to the next in line for the receiver, else is freed."""
        line = self._lines.get(receiver)
        while line:
            turn = line.popleft()
            if not line:
                self._lines.pop(receiver, None)
            if not turn.done():
                turn.set_result(None)  # the running count stays: the slot changes hands
                return
        self._running[receiver] -= 1
        if self._running[receiver] <= 0:
            del self._running[receiver]
