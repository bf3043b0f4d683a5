"""``HealthCheck``: what ``/health`` reports, read from Redis at most once a second.

Load balancers, orchestrators and launch scripts poll ``/health`` hard; the answer they get may be
up to ``max_age_s`` old, and concurrent callers share one read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import redis

from core.requests.api_store import RequestStore

HEALTH_MAX_AGE_S = 1.0


@dataclass(frozen=True)
class Health:
    redis_ok: bool
    workers: int
    live_workers: tuple[dict[str, Any], ...] = ()  # name, device and loaded model of each live worker

    @property
    def is_healthy(self) -> bool:
        return self.redis_ok and self.workers > 0

    def body(self) -> dict[str, object]:
        return {"status": "ok" if self.is_healthy else "unavailable", "redis": self.redis_ok, "workers": self.workers}


class HealthCheck:
    def __init__(self, store: RequestStore, max_age_s: float = HEALTH_MAX_AGE_S) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self._last: Health | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[Health] | None = None

    async def current(self) -> Health:
        if self._last is not None and time.monotonic() - self._read_at < self.max_age_s:
            return self._last
        if self._reading is None:  # one read for every caller waiting meanwhile
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if self._reading is reading and reading.done():
                self._reading = None

    async def _read(self) -> Health:
        try:
            await self.store.alive_workers()  # answering at all: Redis is reachable (and forgets long-dead workers)
            live = tuple(await self.store.live_worker_info())
            health = Health(True, len(live), live)
        except redis.RedisError:
            health = Health(False, 0)
        self._last, self._read_at = health, time.monotonic()
        return health
