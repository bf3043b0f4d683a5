"""The published ``@fal-ai/client`` (npm), run under node, against the stack over HTTPS.

Two configurations, each exactly as README documents it: ``proxyUrl: {url: <base>/api/fal/proxy,
when: "always"}``, and a ``requestMiddleware`` that rewrites fal's hosts to ours. All scenarios of
one configuration run in one node process (``js/scenarios.mjs``); the tests assert on its JSON.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.e2e_support import (
    APP,
    StackEndpoint,
    check_images,
    run_js_scenarios,
    scenario,
    step_log_messages,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

MODES = ["proxy", "middleware"]


@pytest.fixture(scope="module", params=MODES)
def js_report(request: pytest.FixtureRequest, e2e_stack: StackEndpoint) -> dict[str, Any]:
    return run_js_scenarios(e2e_stack, request.param)


def log_messages(update: dict[str, Any]) -> list[str]:
    return step_log_messages(update.get("logs"))


def assert_updates(updates: list[dict[str, Any]]) -> None:
    statuses = [update["status"] for update in updates]
    assert statuses and statuses[-1] == "COMPLETED", statuses
    assert {"IN_QUEUE", "IN_PROGRESS"} & set(statuses), statuses
    assert set(statuses) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}, statuses
    assert log_messages(updates[-1]), "logs: true must bring the step logs"
    for update in updates:
        assert update["request_id"] and update["response_url"], update


def test_client_version_is_the_pinned_one(js_report: dict[str, Any]) -> None:
    assert js_report["client_version"] == "1.10.1"


def test_client_built_fal_urls_and_config_redirected_them(js_report: dict[str, Any]) -> None:
    urls = js_report["fal_urls"]
    assert f"POST https://queue.fal.run/{APP}" in urls
    assert f"POST https://fal.run/{APP}" in urls
    assert "POST https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3" in urls
    for suffix in ("/status?logs=1", "/status/stream?logs=1", "/cancel"):
        assert any(url.endswith(suffix) for url in urls), (suffix, urls)


def test_subscribe_polling_with_logs(js_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(js_report, "subscribe_polling")
    assert_updates(outcome["updates"])
    result = outcome["result"]
    assert result["requestId"] == outcome["enqueued"]
    check_images(result["data"], e2e_stack)


def test_subscribe_streaming(js_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(js_report, "subscribe_streaming")
    assert_updates(outcome["updates"])
    check_images(outcome["result"]["data"], e2e_stack)
    assert outcome["result"]["data"]["seed"] == 9


def test_queue_submit_status_stream_status_result(js_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(js_report, "queue")
    submitted = outcome["submitted"]
    request_id = submitted["request_id"]
    assert submitted["status"] == "IN_QUEUE"
    assert submitted["status_url"].startswith(e2e_stack.base_url + "/")
    assert outcome["firstStatus"]["status"] in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    events = outcome["events"]
    assert events and events[-1]["status"] == "COMPLETED", events
    assert outcome["done"]["status"] == "COMPLETED"
    # Stream logs are incremental; together they hold the step logs.
    assert [message for event in events for message in log_messages(event)]
    assert outcome["result"]["requestId"] == request_id
    check_images(outcome["result"]["data"], e2e_stack)
    final = outcome["finalStatus"]
    assert final["status"] == "COMPLETED" and log_messages(final)
    assert final["metrics"]["inference_time"] > 0
    assert outcome["lateDone"]["status"] == "COMPLETED"
    cancel = outcome["cancelCompleted"]
    assert cancel["isApiError"] and cancel["status"] == 400, cancel


def test_queue_cancel(js_report: dict[str, Any]) -> None:
    outcome = scenario(js_report, "cancel")
    assert outcome["cancelled"]["class"] is None, outcome["cancelled"]
    final = outcome["finalStatus"]
    assert final["status"] == "COMPLETED" and final["error_type"] == "client_cancelled", final
    error = outcome["resultError"]
    assert error["isApiError"] and error["status"] == 499, error
    assert error["body"]["error_type"] == "client_cancelled"
    unknown = outcome["unknownStatus"]
    assert unknown["isApiError"] and unknown["status"] == 404, unknown


def test_run(js_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    result = scenario(js_report, "run")["result"]
    assert result["requestId"]
    check_images(result["data"], e2e_stack, content_type="image/jpeg")


def test_storage_upload_and_read_back(js_report: dict[str, Any], e2e_stack: StackEndpoint) -> None:
    outcome = scenario(js_report, "upload")
    assert outcome["url"].startswith(e2e_stack.base_url + "/")
    assert outcome["status"] == 200 and outcome["matches"], outcome
    assert outcome["contentType"].startswith("text/plain"), outcome
    assert outcome["blobStatus"] == 200 and outcome["blobMatches"], outcome


def test_validation_error_with_field_errors(js_report: dict[str, Any]) -> None:
    outcome = scenario(js_report, "validation")
    for call in ("subscribe", "run"):
        error = outcome[call]
        assert error["isValidationError"] and error["status"] == 422, (call, error)
        assert error["numInferenceStepsErrors"], (call, error["fieldErrors"])
        assert error["numInferenceStepsErrors"][0]["msg"], error


@pytest.mark.parametrize("mode", MODES)
def test_wrong_key_is_an_auth_error(mode: str, e2e_stack: StackEndpoint) -> None:
    report = run_js_scenarios(e2e_stack, mode, group="wrong_key", timeout_s=60)
    outcome = scenario(report, "wrong_key")
    for call in ("submit", "run"):
        error = outcome[call]
        assert error["isApiError"] and error["status"] == 401, (call, error)
