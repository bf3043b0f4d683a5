"""``server.supervised_loops``: a loop that raises is logged, restarted with a doubling backoff and
reported down until it makes progress; a watched thread that died is down; cancellation still stops
everything (the lifespan's shutdown). Over a real API process: ``tests/integration/test_background_loops.py``."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading

import pytest

from server.supervised_loops import LoopStatus, LoopSupervisor, every


def test_a_failing_step_is_restarted_with_backoff_and_reported_down_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = LoopSupervisor()
    seen: list[dict[str, str]] = []
    calls = 0

    async def scan() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError(errno.EMFILE, "Too many open files")  # what os.scandir raised in the issue

    async def scenario() -> None:
        body = lambda status: every(0.01, scan, status)  # noqa: E731 - the loop under test
        task = asyncio.ensure_future(supervisor.supervise("file_expiry", body, backoff_s=0.02, backoff_max_s=0.05))
        for _ in range(200):
            seen.append(supervisor.down())
            if calls > 4:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="server.supervised_loops"):
        asyncio.run(scenario())
    assert calls > 4  # it went on after three failures
    assert {"file_expiry": "OSError: [Errno 24] Too many open files"} in seen
    assert seen[-1] == {} and supervisor.loops["file_expiry"].failures == 0  # recovered
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # one traceback per run of failures, then one line per retry
    assert any("3 in a row" in r.getMessage() for r in caplog.records)
    assert any("running again after 3 failures" in r.getMessage() for r in caplog.records)


def test_the_backoff_doubles_up_to_its_maximum(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = LoopSupervisor()
    attempts = 0

    async def always_failing(status: LoopStatus) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("broken")

    async def scenario() -> None:
        task = asyncio.ensure_future(supervisor.supervise("x", always_failing, backoff_s=0.1, backoff_max_s=0.4))
        while attempts < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="server.supervised_loops"):
        asyncio.run(scenario())
    delays = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "restarting it in" in r.getMessage()]
    assert delays[:5] == ["0.1s", "0.2s", "0.4s", "0.4s", "0.4s"]
    assert supervisor.down() == {"x": "RuntimeError: broken"}


def test_a_loop_that_finishes_is_not_down_and_a_dead_thread_is() -> None:
    supervisor = LoopSupervisor()

    async def done(status: LoopStatus) -> None:
        status.ran()

    asyncio.run(supervisor.supervise("drain_wakeup", done))
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    alive = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    alive.start()
    supervisor.watch_thread("webhooks", thread)
    supervisor.watch_thread("other", alive)
    assert supervisor.down() == {"webhooks": "thread exited"}
