"""Older ``fal-client`` releases (``fal-client-versions.txt``), each with the settings README gives for it.

One submit -> status -> result -> cancel round per release (``python_client_round.py``, in a fresh
interpreter with that release first on ``PYTHONPATH``), against the TLS stack with API keys:

- 0.11 and later read ``FAL_QUEUE_RUN_HOST``: README's two settings (``FAL_RUN_HOST=127.0.0.1:PORT``,
  ``FAL_QUEUE_RUN_HOST=127.0.0.1:PORT/queue``), as for the newest release.
- Before 0.11 the queue host is ``queue.`` + ``FAL_RUN_HOST``: ``FAL_RUN_HOST=localhost:PORT``, with
  ``queue.localhost`` resolving to this machine (natively, or through README's hosts line added for the
  client's process only: ``localhost_names``). The newest release runs that way too, since README
  offers it as the one setting that fits every release.

The full-feature tests (``test_e2e_python_client.py``) stay on the newest pin.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from PIL import Image

from tests.e2e.client_versions import PYTHON_ROUND, PythonClient, pinned_python_clients
from tests.e2e.e2e_support import APP, StackEndpoint, run_json_command, step_log_messages
from tests.e2e.localhost_names import HOSTS_LINE, with_queue_localhost

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLIENTS = pinned_python_clients()
NEWEST = PythonClient(installed_version("fal-client"), "the newest pin, from the test venv")
IMAGE_SIZE = (512, 512)


def round_report(command: list[str], env: dict[str, str], client: PythonClient) -> dict[str, Any]:
    if client is not NEWEST:
        env = {**env, "PYTHONPATH": str(client.installed_folder())}
    report = run_json_command(command, env, timeout_s=240)
    if not report["ok"]:
        raise AssertionError(f"fal-client {client.version}: {report['error']}\n{report.get('traceback')}")
    assert report["client_version"] == client.version, report["client_file"]
    return report


def round_command(out_dir: Path) -> list[str]:
    return [sys.executable, str(PYTHON_ROUND), str(out_dir)]


@pytest.fixture(scope="module")
def run_with_queue_localhost(tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[str]], list[str]]:
    scratch = tmp_path_factory.mktemp("hosts")

    def wrap(command: list[str]) -> list[str]:
        wrapped = with_queue_localhost(command, scratch)
        if wrapped is None:
            pytest.skip(f"queue.localhost does not resolve here and no mount namespace is allowed for {HOSTS_LINE!r}")
        return wrapped

    return wrap


def assert_saved_image(download: dict[str, Any], image: dict[str, Any]) -> None:
    """A downloaded output image: served with its type and length, decodes, has the reported size."""
    assert download["url"] == image["url"]
    assert download["status"] == 200, download
    assert download["content_type"] == image["content_type"] == "image/png", download
    body = Path(download["path"]).read_bytes()
    assert int(download["content_length"]) == len(body) == image["file_size"], download
    picture = Image.open(io.BytesIO(body))
    picture.load()
    assert picture.format == "PNG" and picture.size == IMAGE_SIZE == (image["width"], image["height"])


def assert_round(report: dict[str, Any], client: PythonClient, queue_base: str, files_base: str) -> None:
    """What the round must show on ``client``, given what that release offers."""
    expected_calls = (
        ["submit", "cancel", "status", "result", "by_id"] if client.can_cancel else ["submit", "status", "result"]
    )
    assert report["calls"] == expected_calls, report["calls"]

    submitted = report["submitted"]
    request_url = f"{queue_base}/{APP}/requests/{submitted['request_id']}"
    assert submitted["urls"] == [request_url, f"{request_url}/status", f"{request_url}/cancel"], submitted

    assert report["first_status"]["type"] in {"Queued", "InProgress", "Completed"}, report["first_status"]
    completed = report["events"][-1]
    assert completed["type"] == "Completed", completed
    assert step_log_messages(completed["logs"]), "with_logs=True: COMPLETED carries the step logs"
    assert completed["metrics"]["inference_time"] > 0, completed

    output = report["result"]
    assert output["seed"] == 21 and output["has_nsfw_concepts"] == [False], output
    [image] = output["images"]
    assert image["url"].startswith(f"{files_base}/files/"), image
    [download] = report["downloads"]
    assert_saved_image(download, image)

    if not client.can_cancel:
        return
    assert report["by_id_result"] == output
    assert report["by_id_status"]["type"] == "Completed" and step_log_messages(report["by_id_status"]["logs"])
    assert report["cancel_queued"]["raised"] is None, report["cancel_queued"]
    assert report["cancel_completed"]["status_code"] == 400, report["cancel_completed"]
    cancelled = report["cancelled_final_status"]
    assert cancelled["type"] == "Completed", cancelled
    if "error_type" in cancelled:  # Completed.error/error_type exist from 0.13.2 on
        assert cancelled["error_type"] == "client_cancelled" and cancelled["error"], cancelled
    assert report["cancelled_result"]["status_code"] == 499, report["cancelled_result"]


def test_the_test_venv_satisfies_each_release_requirements() -> None:
    """The releases are installed without their dependencies: the venv's must fit each one's own pins."""
    for client in CLIENTS:
        [dist_info] = client.installed_folder().glob("fal_client-*.dist-info")
        requirements = [
            Requirement(line.split(":", 1)[1].strip())
            for line in (dist_info / "METADATA").read_text().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        runtime = [req for req in requirements if req.marker is None or req.marker.evaluate({"extra": ""})]
        assert runtime, f"fal-client {client.version} declares no runtime requirements?"
        for requirement in runtime:
            have = installed_version(requirement.name)
            assert requirement.specifier.contains(have, prereleases=True), (client.version, str(requirement), have)


@pytest.mark.parametrize(
    "client", [c for c in CLIENTS if c.reads_queue_host_setting], ids=lambda client: client.version
)
def test_round_with_readme_queue_host_setting(client: PythonClient, e2e_stack: StackEndpoint, tmp_path: Path) -> None:
    report = round_report(round_command(tmp_path), e2e_stack.python_client_env(), client)
    assert_round(report, client, queue_base=f"{e2e_stack.base_url}/queue", files_base=e2e_stack.base_url)


@pytest.mark.parametrize(
    "client",
    [c for c in CLIENTS if not c.reads_queue_host_setting] + [NEWEST],
    ids=lambda client: client.version,
)
def test_round_with_localhost_names(
    client: PythonClient,
    e2e_stack: StackEndpoint,
    tmp_path: Path,
    run_with_queue_localhost: Callable[[list[str]], list[str]],
) -> None:
    command = run_with_queue_localhost(round_command(tmp_path))
    report = round_report(command, e2e_stack.python_localhost_env(), client)
    port = e2e_stack.host_port.rsplit(":", 1)[1]
    # The server answers on the host the client used, so the request and file URLs name queue.localhost.
    queue_host = f"https://queue.localhost:{port}"
    assert_round(report, client, queue_base=queue_host, files_base=queue_host)
