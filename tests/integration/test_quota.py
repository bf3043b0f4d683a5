"""Issue 19 item 4 over real sockets: one key cannot grow Redis without bound.

The queue bound is checked in the submit's own script (before: read, then written, so concurrent
submits all passed it), a client's ``fal_max_queue_length`` can only lower the operator's, a key past
``BITDANCE_MAX_QUEUED_PER_KEY`` gets 429 with ``Retry-After``, a forwarded host that is not a host
name is ignored (logged), and a Redis at its ``maxmemory`` (``noeviction``) makes submits answer 503
while the API stays up. No worker serves these APIs' queues: what is accepted stays queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from core.requests.records import Keys
from core.settings import Settings
from server.auth import key_id_for
from stack.launcher import ManagedProcess, RedisProcess, base_url, free_port, start_api, start_worker, wait_until_ready
from tests.conftest import KEY_A, KEY_B, stack_settings
from tests.integration.helpers import APP, FAST, poll_until, submit, wait_completed

SUBMIT = f"/queue/{APP}"
BODY = {"prompt": "p", **FAST}


@dataclass
class QuotaApi:
    url: str
    api: ManagedProcess
    log_path: Path

    def client(self, key: str = KEY_A, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Key {key}"}, timeout=30.0, **kwargs)  # type: ignore[arg-type]


@contextmanager
def quota_api(redis_server: RedisProcess, root: Path, **overrides: object) -> Iterator[QuotaApi]:
    values: dict[str, object] = {"key_prefix": f"quota{free_port()}", **overrides}
    settings = stack_settings(redis_server, root / "storage", **values)
    log_path = root / "api.log"
    api = start_api(settings, None, log_path)
    try:
        wait_until_ready(base_url(settings), processes=(api,))
        yield QuotaApi(base_url(settings), api, log_path)
    finally:
        api.stop()


def assert_fal_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error_type"] == "runner_scheduling_failure" and isinstance(body["detail"], str)
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-fal-request-id"]


def test_concurrent_submits_never_pass_the_bound_and_clients_cannot_raise_it(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    with quota_api(redis_server, tmp_path, max_queue_length=3) as api, api.client() as client:
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda _: client.post(SUBMIT, json=BODY), range(60)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(200) == 3, statuses  # before: the bound was read before the write, 11 passed
        for response in answers:
            if response.status_code != 200:
                assert_fal_429(response)
        # a client's bound cannot raise the operator's (before: it replaced it) ...
        raise_it = {"fal_max_queue_length": 1_000_000_000}
        assert client.post(SUBMIT, json=BODY, params=raise_it).status_code == 429
        accepted = next(r.json() for r in answers if r.status_code == 200)
        assert client.put(accepted["cancel_url"].replace(api.url, "")).status_code in (200, 202)
        # ... a lower one still lowers it, and a cancelled request leaves room
        assert client.post(SUBMIT, json=BODY, params={"fal_max_queue_length": 2}).status_code == 429
        assert client.post(SUBMIT, json=BODY, params=raise_it).status_code == 200


def test_the_default_queue_bound_is_finite() -> None:
    from core.settings import Settings

    assert Settings().max_queue_length == 1000


def test_a_key_past_its_queued_quota_gets_429_and_others_do_not(redis_server: RedisProcess, tmp_path: Path) -> None:
    with (
        quota_api(redis_server, tmp_path, max_queued_per_key=2, max_queue_length=100) as api,
        api.client(KEY_A) as a,
        api.client(KEY_B) as b,
    ):
        first = a.post(SUBMIT, json=BODY)
        assert [first.status_code, a.post(SUBMIT, json=BODY).status_code] == [200, 200]
        refused = a.post(SUBMIT, json=BODY)
        assert_fal_429(refused)
        assert "key" in refused.json()["detail"]
        assert [b.post(SUBMIT, json=BODY).status_code for _ in range(2)] == [200, 200]  # another key: its own quota
        assert_fal_429(b.post(SUBMIT, json=BODY))
        # a cancelled request no longer counts against its key
        assert a.put(first.json()["cancel_url"].replace(api.url, "")).status_code in (200, 202)
        assert a.post(SUBMIT, json=BODY).status_code == 200
        assert_fal_429(a.post(SUBMIT, json=BODY))


INVALID_HOSTS = ["x" * (8 << 20), "evil.example/path?x=1", "a b", "@evil", "[::1", "h:99999999", "a..b"]


def test_an_invalid_forwarded_host_is_ignored_and_logged(redis_server: RedisProcess, tmp_path: Path) -> None:
    with quota_api(redis_server, tmp_path, max_header_bytes=16 << 20) as api, api.client() as client:
        for forwarded in INVALID_HOSTS:
            headers = {"X-Forwarded-Host": forwarded, "X-Forwarded-Proto": "gopher"}
            response = client.post(SUBMIT, json=BODY, headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["status_url"].startswith(f"{api.url}{SUBMIT}/requests/"), forwarded[:64]
            assert len(response.content) < 2048  # before: an 8 MB host made a 24 MB answer
        good = client.post(SUBMIT, json=BODY, headers={"X-Forwarded-Host": "api.example.com:8443"})
        assert good.json()["status_url"].startswith(f"http://api.example.com:8443{SUBMIT}/requests/")
        log = api.log_path.read_text()
        assert log.count("invalid x-forwarded-host") == len(INVALID_HOSTS)
        assert "invalid x-forwarded-proto" in log
        assert len(log) < 1 << 20  # the log line names a bounded part of the value


def test_the_launchers_redis_refuses_writes_at_maxmemory(tmp_path: Path) -> None:
    tiny = RedisProcess(tmp_path / "redis", log_path=tmp_path / "redis.log", maxmemory="3mb").start()
    try:
        conn = redis.Redis.from_url(tiny.url, decode_responses=True)
        assert conn.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert int(conn.config_get("maxmemory")["maxmemory"]) == 3 << 20
        with quota_api(tiny, tmp_path, max_queue_length=None) as api, api.client() as client:
            prompt = "x" * 10_000  # about 10 KB stored per request, and RQ's copy
            answers = []
            for _ in range(1000):
                response = client.post(SUBMIT, json={**BODY, "prompt": prompt})
                answers.append(response.status_code)
                if response.status_code != 200:
                    break
            assert answers[-1] == 503, answers  # before: no maxmemory, Redis grew with every submit
            assert answers.count(200) >= 1
            body = response.json()
            assert body["error_type"] == "runner_scheduling_failure" and "full" in body["detail"]
            assert response.headers["retry-after"] and response.headers["x-fal-request-id"]
            assert client.get("/health/live").status_code == 200  # the API stays up
            assert tiny.process is not None and tiny.process.is_running()
            # submits stop short of maxmemory: the workers can still start, log, renew and complete
            # what was accepted (before: submits filled Redis and every write was refused, theirs too)
            assert conn.set("quota-probe:lease", "worker-attempt", px=30_000)
            assert conn.rpush("quota-probe:logs", "x" * 1000) == 1
        conn.close()
    finally:
        tiny.stop()


def running_limit_settings(redis_server: RedisProcess, root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "key_prefix": f"quotarun{free_port()}",
        "simulated_slots": 3,
        "simulated_speed": 1.0,  # a 512x512 request of 10 steps takes a second or two
        "max_running_per_key": 1,
        **overrides,
    }
    return stack_settings(redis_server, root / "storage", **values)


def test_a_key_at_its_running_limit_waits_and_others_run(redis_server: RedisProcess, tmp_path: Path) -> None:
    """Three slots, a per-key running limit of 1: a key's two requests run one after the other (both
    COMPLETED, never refused), while another key's request runs beside the first."""
    settings = running_limit_settings(redis_server, tmp_path)
    prefix = settings.key_prefix
    worker = start_worker(settings, Path("simulated"), "cpu", "sim", tmp_path / "worker.log")
    api = start_api(settings, None, tmp_path / "api.log")
    try:
        wait_until_ready(base_url(settings), min_workers=3, processes=(api, worker))
        with (
            httpx.Client(base_url=base_url(settings), headers={"Authorization": f"Key {KEY_A}"}, timeout=30) as a,
            httpx.Client(base_url=base_url(settings), headers={"Authorization": f"Key {KEY_B}"}, timeout=30) as b,
        ):
            first, second = submit(a, BODY)["request_id"], submit(a, BODY)["request_id"]
            other = submit(b, BODY)["request_id"]
            for client, rid in ((a, first), (a, second), (b, other)):
                assert wait_completed(client, rid, timeout_s=60)["status"] == "COMPLETED"
                assert client.get(f"{SUBMIT}/requests/{rid}").status_code == 200  # a result, not an error
        conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
        times = {
            rid: (
                float(conn.hget(Keys(prefix).record(rid), "started_at") or 0),
                float(conn.hget(Keys(prefix).record(rid), "completed_at") or 0),
            )
            for rid in (first, second, other)
        }
        conn.close()
        (start_1, end_1), (start_2, end_2) = sorted([times[first], times[second]])
        assert start_2 >= end_1, times  # before: both ran at once on two slots
        assert times[other][0] < end_1, times  # the other key was not held behind key A's limit
    finally:
        worker.stop()
        api.stop()


def test_a_deferred_request_survives_a_killed_worker(redis_server: RedisProcess, tmp_path: Path) -> None:
    """The waiting request is in Redis (its key's deferred list), not in the worker: killed mid-run, the
    worker's running request is recovered by the sweep and both of the key's requests still complete."""
    settings = running_limit_settings(redis_server, tmp_path, simulated_speed=0.3)
    keys = Keys(settings.key_prefix)
    conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
    worker = start_worker(settings, Path("simulated"), "cpu", "sim", tmp_path / "worker.log")
    api = start_api(settings, None, tmp_path / "api.log")
    try:
        wait_until_ready(base_url(settings), min_workers=3, processes=(api, worker))
        with httpx.Client(base_url=base_url(settings), headers={"Authorization": f"Key {KEY_A}"}, timeout=30) as a:
            rids = [submit(a, BODY)["request_id"], submit(a, BODY)["request_id"]]
            deferred = keys.owner_deferred(key_id_for(KEY_A))
            poll_until(lambda: conn.llen(deferred) == 1 or None, timeout_s=30)
            worker.kill()
            worker = start_worker(settings, Path("simulated"), "cpu", "sim2", tmp_path / "worker2.log")
            ends = [wait_completed(a, rid, timeout_s=90) for rid in rids]
        assert all(end["status"] == "COMPLETED" for end in ends)
        assert conn.llen(deferred) == 0
        record = conn.hgetall(keys.record(rids[1]))
        assert "error" not in record or not record["error"], record  # the deferred one ran, it was not failed
    finally:
        conn.close()
        worker.stop()
        api.stop()
