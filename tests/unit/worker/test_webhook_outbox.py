"""The webhook outbox on a real Redis, delivering to a real local HTTP receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from core.errors import RequestTimeoutError
from core.settings import Settings
from core.webhooks.delivery import WebhookSender
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.outbox import WebhookOutbox, build_outbox
from core.webhooks.signing import WebhookSigner, verify
from tests.integration.helpers import WebhookListener

from .fakes import FakePipeline
from .test_tasks import make_runner, submit


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(progress_interval_s=0.0, webhook_backoff_s=10.0, webhook_max_attempts=3)


@pytest.fixture
def listener() -> Iterator[WebhookListener]:
    hooks = WebhookListener(fail_first=1).start()
    yield hooks
    hooks.stop()


def outbox_for(settings: Settings, clock: Clock) -> WebhookOutbox:
    _, store = make_runner(settings, FakePipeline())
    sender = WebhookSender(settings, signer=lambda: WebhookSigner.shared(store.client, store.keys))
    return WebhookOutbox(store.client, settings, sender, clock=clock)


def test_completion_puts_the_webhook_in_the_outbox(settings: Settings, listener: WebhookListener) -> None:
    runner, store = make_runner(settings, FakePipeline(steps=1))
    submit(settings, "req-hook", webhook=None)
    store.client.hset(store.keys.record("req-hook"), "webhook", listener.url)
    submit(settings, "req-quiet")
    runner.run("req-hook")
    runner.run("req-quiet")
    outbox = outbox_for(settings, Clock())
    assert outbox.pending() == ["req-hook"]  # written by the same script that completed the request
    assert store.client.hget(store.keys.record("req-hook"), "webhook_status") == "pending"


def test_retries_back_off_and_survive_a_new_process(settings: Settings, listener: WebhookListener) -> None:
    _, store = make_runner(settings, FakePipeline())
    submit(settings, "req-retry")
    key = store.keys.record("req-retry")
    store.client.hset(key, "webhook", listener.url)
    store.start("req-retry", "w")
    store.complete_error("req-retry", RequestTimeoutError().to_stored())

    clock = Clock()
    first = outbox_for(settings, clock)
    assert first.deliver_due() == 1  # the receiver answers 500
    assert store.client.hget(key, "webhook_attempts") == "1"
    assert first.deliver_due() == 0  # not due again before its backoff (7.5-12.5 s here)
    assert first.pending() == ["req-retry"]

    clock.now += 13.0
    after_restart = outbox_for(settings, clock)  # another process: nothing lived in memory
    assert after_restart.deliver_due() == 1
    hook = listener.received.get(timeout=5)
    assert hook["body"]["request_id"] == "req-retry" and hook["body"]["status"] == "ERROR"
    assert hook["body"]["payload"]["detail"] and hook["headers"]["X-Fal-Webhook-Request-Id"] == "req-retry"
    assert hook["headers"]["X-Fal-Webhook-User-Id"] == "owner-1"
    jwks = {"keys": [WebhookSigner.shared(store.client, store.keys).jwk()]}
    assert verify(jwks, hook["headers"], hook["raw"])
    assert not verify(jwks, hook["headers"], hook["raw"] + b" ")  # any change to the body breaks it
    assert store.client.hget(key, "webhook_status") == "delivered"
    assert after_restart.pending() == []


def test_a_dispatcher_dying_mid_attempt_leaves_it_due_after_the_lease(settings: Settings) -> None:
    clock = Clock()
    outbox = outbox_for(settings, clock)
    _, store = make_runner(settings, FakePipeline())
    store.client.zadd(outbox.keys.webhooks, {"req-x": clock.now})
    taken = outbox._lease(keys=[outbox.keys.webhooks], args=["req-x", repr(clock.now), repr(clock.now + 20)])
    assert taken == 1  # ... and that dispatcher dies here
    assert outbox._lease(keys=[outbox.keys.webhooks], args=["req-x", repr(clock.now), repr(clock.now + 20)]) == 0
    clock.now += 21
    assert outbox.deliver_due() == 1  # no record: dropped, not retried forever
    assert outbox.pending() == []


def test_gives_up_after_the_last_attempt(settings: Settings) -> None:
    _, store = make_runner(settings, FakePipeline())
    submit(settings, "req-dead")
    key = store.keys.record("req-dead")
    store.client.hset(key, "webhook", "http://127.0.0.1:9/unreachable")
    store.start("req-dead", "w")
    store.complete_error("req-dead", RequestTimeoutError().to_stored())
    clock = Clock()
    outbox = outbox_for(settings, clock)
    for _ in range(3):
        assert outbox.deliver_due() == 1
        clock.now += 100.0
    assert store.client.hget(key, "webhook_status") == "failed"
    assert outbox.pending() == [] and outbox.deliver_due() == 0


def test_dispatcher_thread_delivers_what_is_due(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(progress_interval_s=0.0, webhook_backoff_s=0.05, webhook_poll_interval_s=0.02)
    hooks = WebhookListener(fail_first=1).start()
    runner, store = make_runner(settings, FakePipeline(steps=1))
    dispatcher = WebhookDispatcher(build_outbox(store.client, settings))
    dispatcher.start()
    try:
        submit(settings, "req-live")
        store.client.hset(store.keys.record("req-live"), "webhook", hooks.url)
        runner.run("req-live")
        hook = hooks.received.get(timeout=10)
        assert hook["body"]["status"] == "OK" and hooks.attempts == 2
    finally:
        dispatcher.stop()
        hooks.stop()
    assert not dispatcher.is_alive()


def test_every_process_signs_with_the_same_key(settings: Settings) -> None:
    _, store = make_runner(settings, FakePipeline())
    first = WebhookSigner.shared(store.client, store.keys)
    second = WebhookSigner.shared(store.client, store.keys)  # another process: reads the stored key
    assert first.public_bytes == second.public_bytes and len(first.public_bytes) == 32
    headers = first.headers("rid", "user", "1700000000", b'{"a": 1}')
    assert verify({"keys": [second.jwk()]}, headers, b'{"a": 1}')
    other = {"keys": [{**second.jwk(), "x": "A" * 43}]}
    assert not verify(other, headers, b'{"a": 1}')
