"""The published ``fal-client`` (PyPI), configured only through its own settings, against the stack.

Each group of scenarios runs once in a fresh interpreter (``python_client_driver.py``) with the
environment a user sets (README, "Point your fal client at this server"): ``FAL_KEY``,
``FAL_RUN_HOST``, ``FAL_QUEUE_RUN_HOST`` and ``SSL_CERT_FILE``. The tests below assert on what the
client returned or raised, and download every image it was given.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.e2e_support import (
    APP,
    StackEndpoint,
    WebhookReceiver,
    check_images,
    run_python_driver,
    scenario,
    step_log_messages,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def sync_report(e2e_stack: StackEndpoint, webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return run_python_driver(e2e_stack, "sync", "--webhook-url", webhook_receiver.url)


@pytest.fixture(scope="module")
def async_report(e2e_stack: StackEndpoint) -> dict[str, Any]:
    return run_python_driver(e2e_stack, "async")


def queue_url(stack: StackEndpoint, request_id: str) -> str:
    return f"{stack.base_url}/queue/{APP}/requests/{request_id}"


def assert_subscribe_updates(updates: list[dict[str, Any]]) -> None:
    """``on_queue_update`` saw the request waiting or running with step logs, then completed."""
    kinds = [update["type"] for update in updates]
    assert kinds and kinds[-1] == "Completed", kinds
    assert {"Queued", "InProgress"} & set(kinds), kinds
    for update in updates:
        if update["type"] == "Queued":
            assert isinstance(update["position"], int) and update["position"] >= 0
    running = [update for update in updates if update["type"] == "InProgress"]
    assert any(step_log_messages(update["logs"]) for update in running), running
    completed = updates[-1]
    assert completed["error"] is None and completed["error_type"] is None, completed
    assert step_log_messages(completed["logs"]), "with_logs=True: COMPLETED carries the logs"
    assert completed["metrics"]["inference_time"] > 0, completed


def assert_handle_flow(outcome: dict[str, Any], stack: StackEndpoint) -> None:
    """submit -> handle.status(with_logs) -> handle.iter_events -> handle.get, then the by-id calls."""
    assert outcome["first_status"]["type"] in {"Queued", "InProgress", "Completed"}
    events = outcome["events"]
    assert events[-1]["type"] == "Completed" and events[-1]["error"] is None, events[-1]
    assert step_log_messages(events[-1]["logs"])
    check_images(outcome["result"], stack)
    assert outcome["by_id_result"] == outcome["result"]
    by_id = outcome["by_id_status"]
    assert by_id["type"] == "Completed" and step_log_messages(by_id["logs"]), by_id
    cancel = outcome["cancel_completed"]
    assert cancel["class"] == "FalClientHTTPError" and cancel["status_code"] == 400, cancel


def assert_cancelled(outcome: dict[str, Any]) -> None:
    final = outcome["final_status"]
    assert final["type"] == "Completed", final
    assert final["error_type"] == "client_cancelled" and final["error"], final
    error = outcome["result_error"]
    assert error["class"] == "FalClientHTTPError", error
    assert (error["status_code"], error["error_type"]) == (499, "client_cancelled"), error


def assert_validation_errors(outcome: dict[str, Any]) -> None:
    for call in ("subscribe", "run"):
        error = outcome[call]
        assert error["class"] == "FalClientHTTPError", (call, error)
        assert error["status_code"] == 422, (call, error)
        assert "num_inference_steps" in error["str"], (call, error)
        detail = error["message"]
        assert isinstance(detail, list) and detail[0]["loc"][-1] == "num_inference_steps", detail


# ---------------------------------------------------------------- sync client


def test_client_version_is_the_pinned_one(sync_report: dict[str, Any]) -> None:
    assert sync_report["client_version"] == "1.0.3"


def test_subscribe_with_logs_and_queue_updates(sync_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(sync_report, "subscribe")
    assert outcome["request_id"]
    assert_subscribe_updates(outcome["updates"])
    check_images(outcome["result"], e2e_stack)
    assert outcome["result"]["seed"] == 7


def test_submit_then_handle_status_iter_events_get(sync_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(sync_report, "submit")
    response_url, status_url, cancel_url = outcome["urls"]
    # The handle uses the URLs the server returned: absolute, https, under the /queue prefix.
    assert response_url == queue_url(e2e_stack, outcome["request_id"])
    assert (status_url, cancel_url) == (response_url + "/status", response_url + "/cancel")
    assert_handle_flow(outcome, e2e_stack)


def test_same_seed_and_prompt_give_the_same_image(sync_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    first = check_images(scenario(sync_report, "subscribe")["result"], e2e_stack)[0]
    second = check_images(scenario(sync_report, "submit")["result"], e2e_stack)[0]
    assert first.tobytes() == second.tobytes()


def test_cancel_status_and_result_by_request_id(sync_report: dict[str, Any]) -> None:
    outcome = scenario(sync_report, "cancel")
    assert_cancelled(outcome)
    for call in ("unknown_status", "unknown_cancel"):
        error = outcome[call]
        assert error["class"] == "FalClientHTTPError" and error["status_code"] == 404, (call, error)


def test_run_returns_every_image(sync_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    result = scenario(sync_report, "run")["result"]
    check_images(result, e2e_stack, count=2, content_type="image/jpeg")
    assert result["seed"] == 11 and result["prompt"]


def test_webhook_delivers_the_result(
    sync_report: dict[str, Any], webhook_receiver: WebhookReceiver, e2e_stack: StackEndpoint
) -> None:
    outcome = scenario(sync_report, "submit")
    delivery = webhook_receiver.wait_for(outcome["request_id"])
    assert delivery["path"] == "/hooks/bitdance"
    assert delivery["content_type"].startswith("application/json")
    body = delivery["body"]
    assert body["status"] == "OK", body
    assert body["gateway_request_id"]
    assert body["payload"] == outcome["result"]
    check_images(body["payload"], e2e_stack)


def test_validation_error_names_the_field(sync_report: dict[str, Any]) -> None:
    assert_validation_errors(scenario(sync_report, "validation"))


def test_wrong_key_is_an_auth_error(e2e_stack: StackEndpoint) -> None:
    report = run_python_driver(e2e_stack, "wrong_key", key="not-a-valid-key", timeout_s=60)
    outcome = scenario(report, "wrong_key")
    for call in ("submit", "run", "status"):
        error = outcome[call]
        assert error["class"] == "FalClientHTTPError", (call, error)
        assert error["status_code"] == 401, (call, error)
        assert isinstance(error["message"], str) and error["message"], (call, error)


def test_key_id_and_secret_are_accepted(e2e_stack: StackEndpoint) -> None:
    if e2e_stack.key_pair is None:
        pytest.skip("the server has no key_id:key_secret key configured")
    report = run_python_driver(e2e_stack, "key_pair", key_pair=e2e_stack.key_pair, timeout_s=60)
    error = scenario(report, "key_pair")["status"]
    # Authenticated: the unknown request id is what fails.
    assert error["class"] == "FalClientHTTPError" and error["status_code"] == 404, error


# ---------------------------------------------------------------- AsyncClient


def test_async_subscribe_with_logs_and_queue_updates(async_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(async_report, "subscribe")
    assert_subscribe_updates(outcome["updates"])
    check_images(outcome["result"], e2e_stack)


def test_async_submit_then_handle_status_iter_events_get(
    async_report: dict[str, Any], e2e_stack: StackEndpoint
) -> None:
    outcome = scenario(async_report, "submit")
    assert_handle_flow(outcome, e2e_stack)
    assert outcome["result"]["seed"] == 8


def test_async_cancel_by_request_id(async_report: dict[str, Any]) -> None:
    assert_cancelled(scenario(async_report, "cancel"))


def test_async_run_with_sync_mode_returns_data_uris(async_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    result = scenario(async_report, "run")["result"]
    check_images(result, e2e_stack, inline=True)


def test_async_validation_error_names_the_field(async_report: dict[str, Any]) -> None:
    assert_validation_errors(scenario(async_report, "validation"))
