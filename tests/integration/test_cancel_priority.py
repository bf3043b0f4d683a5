"""Cancellation (queued and running), priorities and the start deadline, behind a running blocker."""

from __future__ import annotations

from tests.conftest import LiveStack

from .helpers import APP, PATCH_LOG, WebhookListener, status, submit, wait_completed, wait_status


def test_cancel_priority_and_start_timeout(live_stack: LiveStack) -> None:
    listener = WebhookListener().start()
    with live_stack.client() as client:
        blocker = submit(client, {"prompt": "slow blocker", "num_inference_steps": 100})
        wait_status(client, blocker["request_id"], "IN_PROGRESS")
        low = submit(client, {"prompt": "low one"}, headers={"x-fal-queue-priority": "low"})
        normal = submit(
            client,
            {"prompt": "normal one"},
            headers={"x-fal-queue-priority": "normal"},
            params={"fal_webhook": listener.url},
        )
        late = submit(client, {"prompt": "late"}, headers={"x-fal-request-timeout": "0.5"})
        # normal is served before low, whatever the submit order
        assert status(client, normal["request_id"]).json()["queue_position"] == 0
        assert status(client, low["request_id"]).json()["queue_position"] == 2

        # a request that cannot start within its x-fal-request-timeout ends with 504
        done = wait_completed(client, late["request_id"], timeout_s=30)
        assert done["error_type"] == "request_timeout"
        result = client.get(late["response_url"])
        assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
        assert result.json()["error_type"] == "request_timeout"

        # cancel a queued request: 202, then COMPLETED with client_cancelled, and it never runs
        for queued in (normal, low):
            response = client.put(queued["cancel_url"])
            assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
            final = status(client, queued["request_id"]).json()
            assert final["status"] == "COMPLETED" and final["error_type"] == "client_cancelled"
            assert final["logs"] == []  # never started: no progress at all
            result = client.get(f"/queue/{APP}/requests/{queued['request_id']}")
            assert result.status_code == 499 and result.json()["error_type"] == "client_cancelled"

        # the request cancelled while queued still gets its ERROR webhook
        hook = listener.received.get(timeout=30)["body"]
        assert hook["request_id"] == normal["request_id"] and hook["status"] == "ERROR"
        assert hook["error"] == "Invalid status code: 499" and hook["payload"]["error_type"] == "client_cancelled"
        listener.stop()

        # cancel the running blocker: it stops within a step
        assert client.put(blocker["cancel_url"]).status_code == 202
        final = wait_completed(client, blocker["request_id"], timeout_s=30)
        assert final["error"] == "Request cancelled" and final["error_type"] == "client_cancelled"
        patches = [m.groups() for log in final["logs"] if (m := PATCH_LOG.match(log["message"]))]
        assert patches and patches[-1][0] != patches[-1][1]  # stopped before the last patch
        assert not any(log["message"].startswith("Done") for log in final["logs"])
        assert client.put(blocker["cancel_url"]).status_code == 400
