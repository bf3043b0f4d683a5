"""A run's attempt token (issue 19 item 9): only the run that holds a request renews its lease and completes it."""

from __future__ import annotations

import time
from collections.abc import Callable

from core.errors import ClientCancelledError
from core.protocol import RequestStatus
from core.requests.records import Keys
from core.requests.worker_store import new_attempt
from core.settings import Settings
from worker import recovery

from .test_recovery import enqueue, setup


def test_a_stalled_run_neither_renews_the_new_runs_lease_nor_completes(make_settings: Callable[..., Settings]) -> None:
    settings, store = setup(make_settings)
    enqueue(settings, "r")
    store.client.lpop(Keys.rq_queue(settings.queue_normal))
    stale = new_attempt("a")
    assert store.start("r", "a", stale) == "started"
    assert store.refresh_lease("r", stale)
    time.sleep(0.3)  # a stalls past its lease
    assert store.refresh_lease("r", stale)  # ran out, but nobody took it yet: still a's, set again
    time.sleep(0.3)
    assert recovery.sweep(store) == {"r": "requeued"}
    assert not store.refresh_lease("r", stale)  # requeued: a may not take it back (before: SET it)
    assert store.client.exists(store.keys.lease("r")) == 0
    store.client.lpop(Keys.rq_queue(settings.queue_normal))
    fresh = new_attempt("b")
    assert store.start("r", "b", fresh) == "started"
    assert not store.refresh_lease("r", stale)
    assert store.client.get(store.keys.lease("r")) == fresh  # b's lease, untouched
    assert not store.holds("r", stale) and store.holds("r", fresh)
    assert store.complete_ok("r", {"images": []}, 1.0, attempt=stale) is False  # a's late result: refused
    assert not store.complete_error("r", ClientCancelledError().to_stored(), attempt=stale)
    record = store.get("r")
    assert record is not None and record.status is RequestStatus.IN_PROGRESS
    assert store.client.hget(store.keys.record("r"), "worker") == "b"
    assert store.complete_ok("r", {"images": []}, 1.0, attempt=fresh) is True
    assert store.complete_ok("r", {"images": []}, 1.0, attempt=fresh) is False  # once
