"""An app's backend proxy, ``@fal-ai/server-proxy``, pointed at this server; a client behind it, as in a browser.

``js/server_proxy_app.mjs`` is the Express backend fal documents (the real ``@fal-ai/server-proxy``
``createHandler`` on ``/api/fal/proxy``, holding the key in ``FAL_KEY``) plus README's one change: a
middleware that rewrites the ``x-fal-target-url`` the client sets from fal's hosts to this server, with
``allowedUrlPatterns`` naming it. The newest ``@fal-ai/client`` then runs the version round through
it with ``proxyUrl`` and no credentials of its own (as a browser page does): every call succeeding
shows the app's key, not the client's, is what this server authorised.

The Express handler of server-proxy 1.2.1 streams every answer back with status 200 (its streaming
branch never copies the upstream status; the same in front of fal), so the server's error answers
(400 for cancelling a finished request, 499 for a cancelled result) reach the client as data, bodies
intact: the round checks them that way (README, "Behind @fal-ai/server-proxy").
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.launcher import ManagedProcess, free_port
from tests.e2e.e2e_support import JS_DIR, StackEndpoint, clean_client_env, node_executable
from tests.e2e.js_round import assert_js_round, run_js_round

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROXY_APP = JS_DIR / "server_proxy_app.mjs"


def wait_for_port(port: int, process: ManagedProcess, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_running():
            raise AssertionError(f"the proxy app exited with {process.popen.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the proxy app did not listen on {port} within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def proxy_app(e2e_stack: StackEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Express app on a free port; yields its proxy route's URL."""
    log = tmp_path_factory.mktemp("server-proxy") / "app.log"
    port = free_port()
    env = clean_client_env()
    env.update(FAL_KEY=e2e_stack.api_key, BITDANCE_URL=e2e_stack.base_url, NODE_EXTRA_CA_CERTS=str(e2e_stack.ca_file))
    log_file = open(log, "ab")  # noqa: SIM115 - owned by ManagedProcess
    popen = subprocess.Popen(
        [node_executable(), str(PROXY_APP), str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    process = ManagedProcess("server-proxy-app", popen, log_file)
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/api/fal/proxy"
    finally:
        process.stop()


def test_round_through_the_apps_server_proxy(proxy_app: str, e2e_stack: StackEndpoint) -> None:
    env = clean_client_env()  # no FAL_KEY: the client holds no credentials, the app does
    env["NODE_EXTRA_CA_CERTS"] = str(e2e_stack.ca_file)  # uploads and downloads go to the server directly
    report = run_js_round(e2e_stack, "@fal-ai/client", "proxy", proxy_app, env)
    assert report["name"] == "@fal-ai/client"
    assert_js_round(report, e2e_stack, statuses_preserved=False)
