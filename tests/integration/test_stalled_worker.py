"""A worker stalled past its lease (SIGSTOP) does not duplicate work (issue 19 item 9).

Real redis-server, uvicorn and two ``python -m worker --model simulated`` processes. Worker A runs
requests and is paused past its lease; the sweep requeues them and worker B takes them over; then A
resumes. A's lease renewal must not take the leases back from B, and A's late results must be refused
and its files removed: every request completes exactly once, with no stray files in storage.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import redis

from core.requests.records import Keys
from core.settings import Settings
from core.storage import META_NAME
from model.simulated.profile import FLAT_2S
from stack.launcher import ManagedProcess, RedisProcess, base_url, start_api, start_worker, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .helpers import poll_until, submit, wait_completed

SLOTS = 2
LEASE_S = 1.0
GENERATION_S = 4.0  # about how long one request takes (the simulated worker's speed is set from it)


@pytest.fixture
def stall_settings(redis_server: RedisProcess, tmp_path: Path) -> Settings:
    return stack_settings(
        redis_server,
        tmp_path / "storage",
        key_prefix="stalled",
        lease_ttl_s=LEASE_S,
        sweep_interval_s=0.2,
        simulated_slots=SLOTS,
        simulated_profile=FLAT_2S.name,  # a constant 2 s per request, divided by the speed
        simulated_speed=FLAT_2S.fixed_s / GENERATION_S,
    )


@pytest.fixture
def processes(stall_settings: Settings, tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        if process.is_running():
            os.kill(process.pid, signal.SIGCONT)
        process.stop()


def test_a_worker_stalled_past_its_lease_neither_steals_it_back_nor_completes_twice(
    stall_settings: Settings, processes: list[ManagedProcess], tmp_path: Path
) -> None:
    settings = stall_settings
    keys = Keys(settings.key_prefix)
    api = start_api(settings, None, tmp_path / "api.log")
    processes.append(api)
    stalled = start_worker(settings, Path("simulated"), "cpu", "stall-a", tmp_path / "worker-a.log")
    processes.append(stalled)
    url = base_url(settings)
    wait_until_ready(url, min_workers=SLOTS, processes=(api, stalled))
    db = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    with db, httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY_A}"}, timeout=30.0) as client:
        submitted = [submit(client, {"prompt": f"stalled {i}", "seed": i}) for i in range(2 * SLOTS)]
        rids = [body["request_id"] for body in submitted]

        def running_on(prefix: str) -> list[str]:
            records = [db.hmget(keys.record(rid), "status", "worker") for rid in rids]
            return [rid for rid, (st, worker) in zip(rids, records, strict=True)
                    if st == "IN_PROGRESS" and (worker or "").startswith(prefix)]  # fmt: skip

        taken = poll_until(lambda: running_on("stall-a") if len(running_on("stall-a")) == SLOTS else None)
        time.sleep(0.5)  # mid-generation
        os.kill(stalled.pid, signal.SIGSTOP)  # paused past its lease
        takeover = start_worker(settings, Path("simulated"), "cpu", "stall-b", tmp_path / "worker-b.log")
        processes.append(takeover)
        poll_until(lambda: set(taken) <= set(running_on("stall-b")) or None, timeout_s=60)

        os.kill(stalled.pid, signal.SIGCONT)  # A's heartbeat comes back while B runs them
        time.sleep(4 * LEASE_S / 3)  # a few of A's heartbeats
        for rid in taken:
            lease = db.get(keys.lease(rid)) or ""
            status = db.hget(keys.record(rid), "status")
            assert status == "COMPLETED" or lease.startswith("stall-b"), (rid, lease)  # before: A set it back

        results = {rid: wait_completed(client, rid, timeout_s=60) for rid in rids}
        time.sleep(GENERATION_S)  # whatever A still had in hand is finished (or dropped) by now
        tokens = []
        for seed, (rid, body) in enumerate(zip(rids, submitted, strict=True)):
            assert "error" not in results[rid], results[rid]
            output = client.get(body["response_url"]).json()
            assert output["seed"] == seed
            (image,) = output["images"]
            tokens.append(urlparse(image["url"]).path.split("/")[2])
            logs = [entry["message"] for entry in results[rid]["logs"]]
            assert sum(message.startswith("Done:") for message in logs) == 1, logs  # before: A's result too
        on_disk = sorted(meta.parent.name for meta in settings.storage_dir.glob(f"*/{META_NAME}"))
        assert on_disk == sorted(tokens)  # before: A's late images were left behind
        assert int(db.hget(keys.stats, "completed:ok") or 0) == len(rids)
    # A's RQ job ended "lost": it left the job's hash to B, whose own end of the job then went as usual
    assert "Failed to retrieve status for job" not in (tmp_path / "worker-b.log").read_text()
