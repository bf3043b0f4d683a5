"""Issue 19, item 3: a slow or hostile webhook receiver delays nobody else's webhook.

Real Redis, real HTTP on loopback: a tarpit receiver that drips its answer one byte at a time (so a
per-read timeout never fires) beside an honest one, and the outbox drained by the dispatcher the API
and every worker run. Figures with many receivers: ``python -m bench.webhook_isolation``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from bench.webhook_receivers import HonestReceiver, TarpitReceiver
from core.errors import RequestTimeoutError
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import build_outbox
from tests.integration.helpers import poll_until

from .test_tasks import submit

DEADLINE_S = 2.0  # BITDANCE_WEBHOOK_TIMEOUT_S in these tests: the whole attempt's deadline


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        webhook_timeout_s=DEADLINE_S, webhook_poll_interval_s=0.05, webhook_backoff_s=60.0, webhook_max_attempts=3
    )


@pytest.fixture
def store(settings: Settings) -> WorkerRequestStore:
    return WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)


@pytest.fixture
def honest() -> Iterator[HonestReceiver]:
    receiver = HonestReceiver().start()
    yield receiver
    receiver.stop()


def complete_with_webhook(settings: Settings, store: WorkerRequestStore, rid: str, url: str) -> None:
    """A request that ends (as a worker ends it) with ``url`` as its ``fal_webhook``: due in the outbox now."""
    submit(settings, rid)
    store.client.hset(store.keys.record(rid), "webhook", url)
    store.start(rid, "w")
    store.complete_error(rid, RequestTimeoutError().to_stored())


def webhook_state(store: WorkerRequestStore, rid: str) -> tuple[str | None, str | None]:
    status, attempts = store.client.hmget(store.keys.record(rid), "webhook_status", "webhook_attempts")
    return status, attempts


@pytest.fixture
def dispatchers() -> Iterator[list[WebhookDispatcher]]:
    started: list[WebhookDispatcher] = []
    yield started
    for dispatcher in started:
        dispatcher.stop()


def start_dispatcher(settings: Settings, store: WorkerRequestStore, started: list[WebhookDispatcher]) -> None:
    dispatcher = WebhookDispatcher(build_outbox(store.client, settings))
    started.append(dispatcher)
    dispatcher.start()


def test_a_tarpit_receiver_delays_no_other_webhook(
    settings: Settings, store: WorkerRequestStore, honest: HonestReceiver, dispatchers: list[WebhookDispatcher]
) -> None:
    tarpit = TarpitReceiver(drip_s=0.5).start()  # a byte every 0.5 s: within any per-read timeout
    try:
        complete_with_webhook(settings, store, "req-tarpit", tarpit.url)  # due first
        complete_with_webhook(settings, store, "req-honest", honest.url)
        began = time.time()
        start_dispatcher(settings, store, dispatchers)

        arrived = poll_until(lambda: honest.arrivals.get("req-honest"), timeout_s=DEADLINE_S + 10)
        assert arrived - began < 1.0  # before: only after the tarpit let go (never, with an endless header)
        assert tarpit.connections == 1 and tarpit.open_connections == 1  # ... while the tarpit was being served

        # The tarpit's attempt ends at the deadline, as a whole (before: per read, so never).
        poll_until(lambda: tarpit.open_connections == 0, timeout_s=DEADLINE_S + 10)
        assert tarpit.held_s[0] < DEADLINE_S + 1.0
        poll_until(lambda: webhook_state(store, "req-tarpit")[1] == "1", timeout_s=5)
        assert webhook_state(store, "req-tarpit") == ("pending", "1")  # retried later, after its backoff
        assert webhook_state(store, "req-honest") == ("delivered", "1")
    finally:
        tarpit.stop()


def test_a_receiver_at_its_cap_waits_without_using_attempts(
    make_settings: Callable[..., Settings], honest: HonestReceiver, dispatchers: list[WebhookDispatcher]
) -> None:
    """Five webhooks to one tarpit, two slots per receiver: two attempts at a time, the others postponed."""
    settings = make_settings(
        webhook_timeout_s=DEADLINE_S,
        webhook_poll_interval_s=0.05,
        webhook_backoff_s=60.0,
        webhook_concurrency_per_host=2,
    )
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    tarpit = TarpitReceiver(drip_s=0.2).start()
    try:
        for index in range(5):
            complete_with_webhook(settings, store, f"req-tarpit-{index}", tarpit.url)
        complete_with_webhook(settings, store, "req-honest", honest.url)
        began = time.monotonic()
        start_dispatcher(settings, store, dispatchers)
        poll_until(lambda: honest.arrivals.get("req-honest"), timeout_s=5)
        time.sleep(max(0.0, began + DEADLINE_S / 2 - time.monotonic()))  # within the first attempts' deadline
        counted = [webhook_state(store, f"req-tarpit-{i}")[1] for i in range(5)]
        assert sorted(counted, key=str) == ["1", "1", None, None, None]  # the postponed ones used no attempt
        most_open = 0
        while time.monotonic() < began + 2 * DEADLINE_S + 0.5:  # the next two take the freed slots
            most_open = max(most_open, tarpit.open_connections)
            time.sleep(0.02)
        assert most_open == 2
        assert sum(webhook_state(store, f"req-tarpit-{i}")[1] == "1" for i in range(5)) >= 4
    finally:
        tarpit.stop()


def test_an_endless_response_body_is_never_read(settings: Settings, store: WorkerRequestStore) -> None:
    """A 2xx whose body never ends (a gigabyte streamed as fast as we read it): delivered at once."""
    flood = TarpitReceiver(drip_s=0.001, body=True, chunk_bytes=64 << 10).start()
    try:
        complete_with_webhook(settings, store, "req-flood", flood.url)
        outbox = build_outbox(store.client, settings)
        began = time.monotonic()
        attempt = threading.Thread(target=outbox.deliver_due, daemon=True)
        attempt.start()
        attempt.join(DEADLINE_S + 5)
        assert not attempt.is_alive()  # before: it read the body for as long as the receiver sent it
        assert time.monotonic() - began < DEADLINE_S
        assert webhook_state(store, "req-flood") == ("delivered", "1")
        poll_until(lambda: flood.open_connections == 0, timeout_s=5)
        assert flood.bytes_sent < 32 << 20  # what the socket buffers took before we hung up
    finally:
        flood.stop()


def test_a_stopping_dispatcher_gives_its_webhooks_back(
    make_settings: Callable[..., Settings], honest: HonestReceiver, dispatchers: list[WebhookDispatcher]
) -> None:
    """An attempt cut short by its process stopping is due again at once, for the next dispatcher (its lease,
    the attempt's 30 s deadline plus a margin, is not waited for)."""
    settings = make_settings(webhook_timeout_s=30.0, webhook_poll_interval_s=0.05, webhook_backoff_s=60.0)
    store = WorkerRequestStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    tarpit = TarpitReceiver(drip_s=0.2).start()
    try:
        complete_with_webhook(settings, store, "req-handover", tarpit.url)
        start_dispatcher(settings, store, dispatchers)
        poll_until(lambda: tarpit.open_connections == 1, timeout_s=5)
        store.client.hset(store.keys.record("req-handover"), "webhook", honest.url)  # the receiver recovers
        dispatchers[0].stop()
        assert not dispatchers[0].is_alive()
        start_dispatcher(settings, store, dispatchers)  # another process: no lease to wait for
        poll_until(lambda: honest.arrivals.get("req-handover"), timeout_s=3)
        assert webhook_state(store, "req-handover")[0] == "delivered"
    finally:
        tarpit.stop()
