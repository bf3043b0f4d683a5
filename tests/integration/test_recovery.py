"""Never lose a request: a worker killed mid-job and a Redis restart (AOF) lose nothing."""

from __future__ import annotations

from tests.conftest import LiveStack

from .helpers import poll_until, status, submit, wait_completed


def test_worker_killed_and_redis_restarted_lose_nothing(live_stack: LiveStack) -> None:
    with live_stack.client() as client:
        running = submit(client, {"prompt": "interrupted", "seed": 5, "num_inference_steps": 20})
        poll_until(lambda: [log for log in (status(client, running["request_id"]).json()["logs"] or [])
                            if log["message"].startswith("patch ")], timeout_s=60)  # fmt: skip
        for worker in live_stack.live_workers():
            worker.kill()  # SIGKILL mid-generation
        queued = submit(client, {"prompt": "waiting", "seed": 6})
        assert status(client, queued["request_id"]).json()["status"] == "IN_QUEUE"

        live_stack.redis_server.kill()  # a crash: only the fsynced AOF survives
        live_stack.redis_server.start()

        live_stack.start_worker()
        first = wait_completed(client, running["request_id"], timeout_s=120)
        second = wait_completed(client, queued["request_id"], timeout_s=120)
        assert "error" not in first and "error" not in second
        assert client.get(running["response_url"]).json()["seed"] == 5
        assert client.get(queued["response_url"]).json()["seed"] == 6
        live_stack.wait_ready(min_workers=1)
