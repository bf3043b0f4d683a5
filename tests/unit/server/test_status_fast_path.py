"""The status hot path builds fal's wire body without the model (``queue_status_body``): it must keep
fal's rules and validate as the documented ``QueueStatus``; the in-memory status cache must forget a
request as soon as the change feed says it changed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from core.errors import RequestNotFoundError, RequestTimeoutError, RunnerServerError
from core.protocol import QueueStatus, RequestStatus, SubmitResponse, queue_status_body, submit_body
from core.requests.records import Keys, StatusView
from server.change_feed import ChangeFeed
from server.status_cache import StatusCache, StatusReader
from server.urls import Urls

URLS = Urls(base="https://h:8443", queue_prefix="/queue").request_urls("fal-ai/bitdance", "r1")
FAILED = RunnerServerError("boom").to_stored()
LOGS = [{"message": "patch 1/16, 10 sampling steps each", "level": "INFO"}]

CASES: list[tuple[dict[str, Any], list[dict[str, Any]] | None, dict[str, Any]]] = [
    ({"status": RequestStatus.IN_QUEUE, "queue_position": 3}, None, {"queue_position": 3, "logs": None, "metrics": {}}),
    ({"status": RequestStatus.IN_QUEUE, "queue_position": 0}, [], {"queue_position": 0, "logs": [], "metrics": {}}),
    ({"status": RequestStatus.IN_PROGRESS}, LOGS, {"logs": LOGS, "metrics": {}}),
    (
        {"status": RequestStatus.COMPLETED, "inference_time": 1.25},
        None,
        {"logs": None, "metrics": {"inference_time": 1.25}},
    ),
    (
        {"status": RequestStatus.COMPLETED, "error": FAILED},
        [],
        {"logs": [], "metrics": {"inference_time": None}, "error": "boom", "error_type": "runner_server_error"},
    ),
]


@pytest.mark.parametrize(("fields", "logs", "expected"), CASES)
def test_status_body_keeps_fals_rules_and_the_documented_schema(
    fields: dict[str, Any], logs: list[dict[str, Any]] | None, expected: dict[str, Any]
) -> None:
    body = queue_status_body(view("r1", **fields), URLS, logs)
    assert body == {**URLS, "status": fields["status"].value, "request_id": "r1", **expected}
    assert list(body)[:5] == ["response_url", "status_url", "cancel_url", "status", "request_id"]
    documented = QueueStatus.model_validate(body).model_dump(mode="json")
    assert {key: documented[key] for key in body} == body  # every key is a QueueStatus field, same value


def test_submit_body_is_the_documented_submit_response() -> None:
    body = submit_body("r1", URLS, 4)
    assert body == SubmitResponse(request_id="r1", gateway_request_id="r1", queue_position=4, **URLS).model_dump()
    assert list(body) == list(SubmitResponse.model_fields)  # same key order too


def view(rid: str = "r1", status: RequestStatus = RequestStatus.IN_QUEUE, **extra: Any) -> StatusView:
    """A status view of ``rid``; ``extra`` overrides its fields."""
    values: dict[str, Any] = {
        "request_id": rid, "status": status, "owner": "o", "endpoint": "fal-ai/bitdance", "queue": "q",
        "queue_position": 0 if status is RequestStatus.IN_QUEUE else None, "deadline": None, "error": None,
        "inference_time": None, "logs": None,
    }  # fmt: skip
    values.update(extra)
    return StatusView(**values)


def test_cache_forgets_on_change_queue_move_age_and_deadline() -> None:
    cache = StatusCache(max_age_s=60)
    cache.put(view("a"), False)
    cache.put(view("b", RequestStatus.IN_PROGRESS), True)
    assert cache.get("a", False) is not None and cache.get("a", True) is None
    cache.drop("a")
    assert cache.get("a", False) is None
    cache.put(view("a"), False)
    cache.drop_queued()  # the queue moved: queued views go, running ones stay
    assert cache.get("a", False) is None and cache.get("b", True) is not None
    cache.put(view("c", deadline=time.time() - 1), False)  # overdue: must be expired by a real read
    assert cache.get("c", False) is None
    stale = StatusCache(max_age_s=0.0, stale_s=0.0)
    stale.put(view("d"), False)
    time.sleep(0.001)
    assert stale.get("d", False) is None
    small = StatusCache(max_entries=2)
    for rid in ("x", "y", "z"):
        small.put(view(rid), False)
    assert small.get("x", False) is None and small.get("z", False) is not None


class CountingStore:
    """Stands in for ``RequestStore.status_view`` to count the reads the reader makes."""

    def __init__(self, result: StatusView) -> None:
        self.result = result
        self.reads = 0
        self.during_read: Any = None

    async def status_view(self, rid: str, owner: str | None = None, logs_from: int | None = None) -> StatusView:
        self.reads += 1
        if self.during_read is not None:
            self.during_read()
        if owner is not None and owner != self.result.owner:
            raise RequestTimeoutError()  # any error: the reader must not cache or hide it
        return self.result


def test_reader_serves_repeat_polls_from_memory_only_while_the_feed_is_live() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(client=None, keys=Keys("p"))  # type: ignore[arg-type]  # never run here
        store = CountingStore(view("r1"))
        reader = StatusReader(store, feed)  # type: ignore[arg-type]
        await reader.view("r1", "o", with_logs=False)
        await reader.view("r1", "o", with_logs=False)
        assert store.reads == 2  # feed not connected: every poll reads Redis
        feed.connected.set()
        await reader.view("r1", "o", with_logs=False)
        await reader.view("r1", "o", with_logs=False)
        assert store.reads == 3
        reader.request_changed("r1")  # what the feed calls on the request's channel
        await reader.view("r1", "o", with_logs=False)
        assert store.reads == 4
        with pytest.raises(RequestNotFoundError):  # another owner never gets the cached view: a 404
            await reader.view("r1", "someone-else", with_logs=False)
        store.result = view("r2")  # a change arrives while a read is in flight: that read is not kept

        def change_arrives() -> None:
            feed.epoch += 1

        store.during_read = change_arrives
        await reader.view("r2", "o", with_logs=False)
        store.during_read = None
        await reader.view("r2", "o", with_logs=False)
        await reader.view("r2", "o", with_logs=False)
        assert store.reads == 6  # the raced read, then one read that was kept (the other owner's 404 read nothing)

    asyncio.run(scenario())


class SlowStore(CountingStore):
    """A read that waits for ``release``: polls arriving meanwhile find it in flight."""

    def __init__(self, result: StatusView) -> None:
        super().__init__(result)
        self.release = asyncio.Event()

    async def status_view(self, rid: str, owner: str | None = None, logs_from: int | None = None) -> StatusView:
        self.reads += 1
        await self.release.wait()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_polls_that_miss_together_share_one_read_until_their_request_changes() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(client=None, keys=Keys("p"))  # type: ignore[arg-type]  # never run here
        feed.connected.set()
        store = SlowStore(view("r1"))
        reader = StatusReader(store, feed)  # type: ignore[arg-type]
        first = [asyncio.ensure_future(reader.view("r1", "o", with_logs=False)) for _ in range(50)]
        other_owner = asyncio.ensure_future(reader.view("r1", "someone-else", with_logs=False))
        with_logs = asyncio.ensure_future(reader.view("r1", "o", with_logs=True))
        await settle()
        assert store.reads == 2  # one read per (request, logs or not), however many pollers
        reader.request_changed("r1")  # a change: later polls must not join the read begun before it
        later = asyncio.ensure_future(reader.view("r1", "o", with_logs=False))
        await settle()
        assert store.reads == 3
        first[0].cancel()  # a poller that goes away does not cancel the read the others wait on
        store.release.set()
        views = await asyncio.gather(*first[1:], later, with_logs)
        assert all(v.request_id == "r1" for v in views)
        with pytest.raises(RequestNotFoundError):
            await other_owner
        store.release.clear()
        store.result = RequestTimeoutError()  # type: ignore[assignment]  # a failed read fails all who share it
        reader.request_changed("r1")
        failing = [asyncio.ensure_future(reader.view("r1", "o", with_logs=False)) for _ in range(3)]
        await settle()
        store.release.set()
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        assert store.reads == 4 and all(isinstance(o, RequestTimeoutError) for o in outcomes)
        store.result = view("r1")
        await reader.view("r1", "o", with_logs=False)  # and is not kept: the next poll reads again
        assert store.reads == 5

    asyncio.run(scenario())


def test_log_entries_alone_keep_the_view_without_logs() -> None:
    cache = StatusCache()
    cache.put(view("r"), False)
    cache.put(view("r"), True)
    cache.drop("r", logs_only=True)
    assert cache.get("r", False) is not None and cache.get("r", True) is None
    cache.drop("r")
    assert cache.get("r", False) is None


def test_an_aged_view_is_answered_while_one_read_refreshes_it() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(client=None, keys=Keys("p"))  # type: ignore[arg-type]  # never run here
        feed.connected.set()
        store = SlowStore(view("r1", RequestStatus.IN_PROGRESS))
        reader = StatusReader(store, feed, StatusCache(max_age_s=0.0, stale_s=60.0))  # type: ignore[arg-type]
        store.release.set()
        first = await reader.view("r1", "o", with_logs=False)
        assert store.reads == 1 and first.status is RequestStatus.IN_PROGRESS
        store.release.clear()  # the refreshing read now hangs, as on a Redis stall
        store.result = view("r1", RequestStatus.COMPLETED)
        polls = await asyncio.wait_for(asyncio.gather(*(reader.view("r1", "o", False) for _ in range(20))), 1.0)
        assert all(v.status is RequestStatus.IN_PROGRESS for v in polls)  # answered at once, from the aged view
        assert store.reads == 2  # and one read refreshes it for all of them
        with pytest.raises(RequestNotFoundError):  # the aged view keeps its owner check
            await reader.view("r1", "someone-else", with_logs=False)
        store.release.set()
        await settle()
        reader.request_changed("r1")  # a change: the next poll waits for a read, never the old view
        assert (await reader.view("r1", "o", with_logs=False)).status is RequestStatus.COMPLETED

    asyncio.run(scenario())
