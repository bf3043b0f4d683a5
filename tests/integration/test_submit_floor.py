"""``bench.submit_floor`` on a real Redis and uvicorn: simultaneous submits to an API no worker serves,
each accepted, the API's CPU per submit measured (the burst's floor printed by ``make bench-loadtest``)."""

from __future__ import annotations

from pathlib import Path

import redis

from bench.submit_floor import measure_submit_floor
from stack.launcher import RedisProcess
from tests.conftest import stack_settings


def test_fifty_simultaneous_submits_are_accepted_and_costed(redis_server: RedisProcess, tmp_path: Path) -> None:
    settings = stack_settings(redis_server, tmp_path / "storage", key_prefix="floortest", api_keys=[])
    floor = measure_submit_floor(settings, tmp_path, 50)
    assert floor.submits == floor.accepted == 50
    assert 0 < floor.api_cpu_ms_per_submit < 200
    assert 0 < floor.latency_p50_s <= floor.latency_max_s < 30
    assert floor.median_floor_s == 25 * floor.api_cpu_ms_per_submit / 1000
    client = redis.Redis.from_url(redis_server.url)
    try:  # the submits are queued under the floor's own prefix, where no worker takes them
        assert client.llen("rq:queue:floortest-floor-normal") == 50
    finally:
        client.close()
