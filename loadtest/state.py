"""The load test's per-process state: request budget, deadline, requests in flight, collected samples.

One ``LoadState`` per process (the local runner's, or each Locust worker's), set by ``runner``
before users start; the users read it with ``current_state()``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from loadtest.config import LoadConfig
from loadtest.samples import Sample


class Flow(Protocol):
    def run(self, payload: dict[str, Any]) -> Sample: ...


class LoadState:
    def __init__(self, config: LoadConfig, budget: int | None, arrival_users: int = 1) -> None:
        self.config = config
        self.budget = budget  # requests this process may still start (None: until the deadline)
        self.arrival_users = arrival_users  # open loop: users sharing the rate in this whole test
        self.started_at: float | None = None
        self.deadline: float | None = None
        self.started = 0
        self.in_flight = 0
        self.samples: list[Sample] = []
        self._unsent: list[Sample] = []  # worker mode: samples not yet reported to the master

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()
            if self.config.duration_s is not None:
                self.deadline = self.started_at + self.config.duration_s

    def take(self) -> bool:
        """Whether one more request may start now (and count it)."""
        self.begin()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if self.budget is not None:
            if self.budget <= 0:
                return False
            self.budget -= 1
        self.started += 1
        return True

    @property
    def exhausted(self) -> bool:
        """No request will start any more."""
        if self.budget is not None and self.budget <= 0:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def idle(self) -> bool:
        """Exhausted and nothing in flight: this process is done."""
        return self.exhausted and self.in_flight == 0

    def run_one(self, flow: Flow, payload: dict[str, Any]) -> None:
        self.in_flight += 1
        try:
            sample = flow.run(payload)
        finally:
            self.in_flight -= 1
        self.samples.append(sample)
        self._unsent.append(sample)

    def drain_unsent(self) -> list[Sample]:
        out, self._unsent = self._unsent, []
        return out


_state: LoadState | None = None


def set_state(state: LoadState) -> None:
    global _state
    _state = state


def current_state() -> LoadState:
    if _state is None:
        raise RuntimeError("no load test configured in this process")
    return _state
