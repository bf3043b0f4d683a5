"""An idle multi-slot simulated worker leaves Redis alone (issue 21): its 320 idle slots each looked at
the queues once a second and sent RQ's three-command heartbeat every two seconds, ~2,900 Redis commands
a second and 13-15 % of a core with nothing queued. Now one idle slot looks per recheck and a slot's RQ
heartbeat is sent at most once a minute (the process's heartbeat keeps every slot visible)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from core.requests.records import Keys
from stack.launcher import RedisProcess, start_worker
from tests.conftest import stack_settings

SLOTS = 40
WINDOW_S = 4.0


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_an_idle_40_slot_worker_sends_few_redis_commands(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis").start()  # its own: no other test's commands are counted
    settings = stack_settings(server, tmp_path / "storage", key_prefix="idle", simulated_slots=SLOTS)
    worker = start_worker(settings, Path("simulated"), "cpu", "idle", tmp_path / "worker.log")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 60
        while client.zcard(Keys("idle").workers) < SLOTS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.zcard(Keys("idle").workers) == SLOTS, (tmp_path / "worker.log").read_text()[-2000:]
        time.sleep(3.0)  # every slot past its first look and first RQ loop round
        before = commands_processed(client)
        time.sleep(WINDOW_S)
        sent = commands_processed(client) - before - 1  # less this test's own INFO
        assert worker.is_running()
    finally:
        client.close()
        worker.stop()
        server.stop()
    per_s = sent / WINDOW_S
    # one look a second (a script and its two pops), the process's heartbeat (here every second, with
    # the tests' 3 s lease: one pipeline of SLOTS + 2 commands), sweep and webhook rounds: 55 a second
    # measured; before, each slot's own looks and RQ heartbeats: 450 a second
    assert per_s < 90, f"{sent} Redis commands in {WINDOW_S:.0f} s from an idle {SLOTS}-slot worker"
