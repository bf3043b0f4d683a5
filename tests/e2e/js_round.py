"""Running ``js/client_round.mjs`` (one round with one pinned JS client) and checking what it reports.

Shared by the JS version matrix and the ``@fal-ai/server-proxy`` test.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.client_versions import JS_ROUND
from tests.e2e.e2e_support import APP, StackEndpoint, check_images, node_executable, run_json_command, step_log_messages


def run_js_round(stack: StackEndpoint, dependency: str, mode: str, url: str, env: dict[str, str]) -> dict[str, Any]:
    """Run the round with ``dependency`` (a package.json name) in ``mode`` against ``url``; fail on its error."""
    report = run_json_command([node_executable(), str(JS_ROUND), dependency, mode, url], env, timeout_s=240)
    if not report["ok"]:
        raise AssertionError(f"{dependency}: {report['error']}\n{report.get('stack')}")
    return report


def assert_js_round(report: dict[str, Any], stack: StackEndpoint, *, statuses_preserved: bool = True) -> None:
    """The round's outcome as a user sees it. ``statuses_preserved=False``: a proxy in between answers
    every call with 200 (see ``test_e2e_server_proxy``), so the server's error bodies arrive as data."""
    submitted = report["submitted"]
    assert submitted["status"] == "IN_QUEUE", submitted
    assert submitted["status_url"] == f"{stack.base_url}/queue/{APP}/requests/{submitted['request_id']}/status"

    assert report["statusKinds"][-1] == "COMPLETED", report["statusKinds"]
    assert set(report["statusKinds"]) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}, report["statusKinds"]
    final = report["finalStatus"]
    assert step_log_messages(final["logs"]) and final["metrics"]["inference_time"] > 0, final
    assert report["output"]["seed"] == 31
    check_images(report["output"], stack)

    assert report["cancelQueued"]["class"] is None, report["cancelQueued"]
    cancelled = report["cancelledFinalStatus"]
    assert cancelled["status"] == "COMPLETED" and cancelled["error_type"] == "client_cancelled", cancelled
    cancel_completed, cancelled_result = report["cancelCompleted"], report["cancelledResult"]
    if statuses_preserved:
        assert cancel_completed["isApiError"] and cancel_completed["status"] == 400, cancel_completed
        assert cancel_completed["body"] == {"status": "ALREADY_COMPLETED"}, cancel_completed
        assert cancelled_result["isApiError"] and cancelled_result["status"] == 499, cancelled_result
        assert cancelled_result["body"]["error_type"] == "client_cancelled", cancelled_result
    else:  # the 400 reaches the client as a success (cancel returns nothing), the 499's body as data
        assert cancel_completed == {"class": None, "returned": None}, cancel_completed
        assert cancelled_result["returned"]["data"]["error_type"] == "client_cancelled", cancelled_result

    upload = report["upload"]
    assert upload["fileUrl"].startswith(f"{stack.base_url}/files/"), upload
    assert upload["status"] == 200 and upload["matches"], upload
