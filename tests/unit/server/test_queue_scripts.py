"""The Lua scripts' calls and answers: each builder fills exactly the KEYS/ARGV its script reads, each
word a script can answer is a member of its outcome enum, and a reply outside the enum raises."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from enum import StrEnum

import pytest
import redis

from core.errors import RequestTimeoutError
from core.requests import scripts
from core.requests.records import Keys, cancelled_error
from core.requests.scripts import (
    CancelMode,
    CancelOutcome,
    ClaimOutcome,
    RecoverOutcome,
    ScriptCall,
    StartOutcome,
)
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings

KEYS = Keys("p")

# Each script with one call of its builder.
CALLS: dict[str, tuple[str, ScriptCall]] = {
    "DEQUEUE": (scripts.DEQUEUE, scripts.dequeue_call(KEYS, queue_lists=["rq:queue:a", "rq:queue:b"], now=1.0)),
    "START": (scripts.START, scripts.start_call(KEYS, request_id="r", worker="w", now=1.0, lease_ms=500)),
    "COMPLETE": (
        scripts.COMPLETE,
        scripts.complete_call(
            KEYS,
            request_id="r",
            now=1.0,
            result_json="{}",
            error_json="",
            inference_time=None,
            ttl_s=60,
            outcome="ok",
        ),
    ),
    "CANCEL_QUEUED": (
        scripts.CANCEL_QUEUED,
        scripts.cancel_queued_call(KEYS, request_id="r", mode=CancelMode.CANCEL, now=1.0, ttl_s=60),
    ),
    "RECOVER_ORPHAN": (
        scripts.RECOVER_ORPHAN,
        scripts.recover_orphan_call(KEYS, request_id="r", now=1.0, max_requeues=1, ttl_s=60),
    ),
    "RECOVER_DEQUEUED": (scripts.RECOVER_DEQUEUED, scripts.recover_dequeued_call(KEYS, request_id="r")),
    "CLAIM": (
        scripts.CLAIM,
        scripts.claim_call(KEYS, request_id="r", worker="w", queue="q", now=1.0, lease_ms=500, job_ttl_s=60),
    ),
    "LEASE_WEBHOOK": (
        scripts.LEASE_WEBHOOK,
        scripts.lease_webhook_call(KEYS, request_id="r", now=1.0, lease_until=2.0),
    ),
    "STATUS_VIEW": (
        scripts.STATUS_VIEW,
        scripts.status_view_call(KEYS, request_id="r", normal_queue="q", logs_from=None),
    ),
}

OUTCOMES: dict[str, type[StrEnum]] = {
    "START": StartOutcome,
    "CLAIM": ClaimOutcome,
    "CANCEL_QUEUED": CancelOutcome,
    "RECOVER_ORPHAN": RecoverOutcome,
    "RECOVER_DEQUEUED": RecoverOutcome,
}


def highest(name: str, lua: str) -> int:
    return max((int(n) for n in re.findall(rf"{name}\[(\d+)\]", lua)), default=0)


@pytest.mark.parametrize("script", sorted(CALLS))
def test_each_builder_fills_exactly_what_its_script_reads(script: str) -> None:
    lua, call = CALLS[script]
    assert len(call.args) == highest("ARGV", lua)
    if "#KEYS" in lua:  # DEQUEUE: its fixed keys, then any number of lists
        assert len(call.keys) > highest("KEYS", lua)
    else:
        assert len(call.keys) == highest("KEYS", lua)
    assert all(isinstance(key, str) for key in call.keys)


@pytest.mark.parametrize("script", sorted(OUTCOMES))
def test_every_word_a_script_answers_is_in_its_enum(script: str) -> None:
    lua, _ = CALLS[script]
    answered = set(re.findall(r"return '(\w+)'", lua)) | set(re.findall(r"outcome = '(\w+)'", lua))
    assert answered and answered <= {member.value for member in OUTCOMES[script]}


def test_the_enums_hold_no_word_their_scripts_never_answer() -> None:
    for enum in set(OUTCOMES.values()):
        answered: set[str] = set()
        for script, lua_enum in OUTCOMES.items():
            if lua_enum is enum:
                lua = CALLS[script][0]
                answered |= set(re.findall(r"return '(\w+)'", lua)) | set(re.findall(r"outcome = '(\w+)'", lua))
        assert {member.value for member in enum} == answered, enum.__name__


def test_cancel_and_expire_store_their_own_error_and_counter() -> None:
    cancel = scripts.cancel_queued_call(KEYS, request_id="r", mode=CancelMode.CANCEL, now=1.5, ttl_s=60)
    expire = scripts.cancel_queued_call(KEYS, request_id="r", mode=CancelMode.EXPIRE, now=1.5, ttl_s=60)
    assert cancel.keys == expire.keys == ["p:req:r", "p:req:r:logs", "p:queued", "p:stats", "p:webhooks"]
    assert cancel.args == ["r", "1.5", cancelled_error(), 60, "cancel", "client_cancelled"]
    timeout = json.dumps(RequestTimeoutError().to_stored().to_dict())
    assert expire.args == ["r", "1.5", timeout, 60, "expire", "request_timeout"]


def test_status_view_asks_for_no_logs_with_minus_one() -> None:
    assert scripts.status_view_call(KEYS, request_id="r", normal_queue="q", logs_from=None).args[:2] == ["r", -1]
    assert scripts.status_view_call(KEYS, request_id="r", normal_queue="q", logs_from=3).args[:2] == ["r", 3]


def test_an_unknown_reply_raises(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    store._start = store.client.register_script("return 'launched'")  # a word START never answers
    with pytest.raises(ValueError, match="launched"):
        store.start("r", "w")


def test_apply_batch_lays_out_each_command_as_its_count_then_its_arguments() -> None:
    call = scripts.apply_batch_call([("HSET", "k", "f", 1.5), ("RPUSH", "l", b"\x00\x9c")], keys=["k", "l"])
    assert call.keys == ["k", "l"]
    assert call.args == [4, "HSET", "k", "f", "1.5", 3, "RPUSH", "l", b"\x00\x9c"]
    with pytest.raises(ValueError):
        scripts.apply_batch_call([()], keys=[])


def test_a_submit_through_the_batch_script_writes_what_a_multi_writes(make_settings: Callable[..., Settings]) -> None:
    """``RequestStore.create`` (one script call) against ``create_request`` (MULTI/EXEC): the same keys,
    the same fields, the same lists, RQ's pickled job data included; only RQ's timestamps differ."""
    import asyncio
    import pickle
    import zlib

    import redis.asyncio as aioredis

    from core.redis_options import async_redis_options
    from core.requests.api_store import RequestStore, create_request
    from core.requests.records import NewRequest

    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url)

    def new(rid: str) -> NewRequest:
        return NewRequest(
            request_id=rid, owner="o", endpoint=settings.endpoint_id, input={"prompt": "un renard \u00e9"},
            priority="normal", files_base="http://h", start_timeout_s=30.0, webhook=None, lifecycle=None,
        )  # fmt: skip

    create_request(client, settings, new("multi"))

    async def through_script() -> int:
        async_client = aioredis.Redis.from_url(
            settings.redis_url, decode_responses=True, **async_redis_options(settings.redis_url)
        )
        try:
            return await RequestStore(async_client, settings).create(new("script"), client)
        finally:
            await async_client.aclose()

    assert asyncio.run(through_script()) == 1  # behind the first one
    keys = Keys(settings.key_prefix)

    def written(rid: str) -> dict[str, object]:
        skipped = (b"created_at", b"deadline", b"ticket")  # tickets: 1 and 2, checked below
        record = {k: v for k, v in client.hgetall(keys.record(rid)).items() if k not in skipped}
        job = {k: v for k, v in client.hgetall(f"rq:job:{rid}").items() if k not in (b"created_at", b"enqueued_at")}
        job[b"description"] = job[b"description"].replace(rid.encode(), b"<id>")
        function, instance, args, kwargs = pickle.loads(zlib.decompress(job[b"data"]))  # RQ's job data
        assert args == (rid,)
        job[b"data"] = repr((function, instance, kwargs)).encode()
        record[b"gateway_request_id"] = b"<id>"
        return {"record": record, "job": job, "deadline": client.zscore(keys.deadlines, rid) is not None}

    assert written("multi") == written("script")
    assert client.lrange(f"rq:queue:{settings.queue_normal}", 0, -1) == [b"multi", b"script"]
    assert client.smembers(keys.queued) == {b"multi", b"script"}
    assert client.hget(keys.stats, "submitted") == b"2"
    assert [client.hget(keys.record(rid), "ticket") for rid in ("multi", "script")] == [b"1", b"2"]
