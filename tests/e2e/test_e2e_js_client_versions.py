"""Older fal JS clients (the npm aliases and ``@fal-ai/serverless-client`` of ``js/package.json``).

One submit -> status -> result -> cancel round plus a storage upload per pin (``js/client_round.mjs``)
against the TLS stack, configured the way README gives for every version under node: a
``requestMiddleware`` that rewrites fal's hosts (including ``rest.alpha.fal.ai``, where releases up to
1.9.2 and the serverless client call the storage API). ``proxyUrl`` is not run for these: before 1.10
the client applies it only in a browser (README). The full-feature tests stay on the newest pin.
"""

from __future__ import annotations

import pytest

from tests.e2e.client_versions import JsClient, pinned_js_clients
from tests.e2e.e2e_support import APP, StackEndpoint
from tests.e2e.js_round import assert_js_round, run_js_round

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLIENTS = pinned_js_clients()
# The REST host each release builds its storage URLs on (config.js getRestApiUrl).
REST_HOST_CHANGED_IN = (1, 9, 3)  # the first release on rest.fal.ai (1.9.2 and earlier: rest.alpha.fal.ai)


def rest_host(client: JsClient) -> str:
    if client.package == "@fal-ai/client" and tuple(map(int, client.version.split("."))) >= REST_HOST_CHANGED_IN:
        return "rest.fal.ai"
    return "rest.alpha.fal.ai"


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: f"{client.package}@{client.version}")
def test_round_with_readme_middleware(client: JsClient, e2e_stack: StackEndpoint) -> None:
    report = run_js_round(e2e_stack, client.dependency, "middleware", e2e_stack.base_url, e2e_stack.js_client_env())
    assert (report["name"], report["client_version"]) == (client.package, client.version)
    assert_js_round(report, e2e_stack)
    # The client built fal's own URLs; README's middleware sent them here.
    urls = report["fal_urls"]
    assert f"POST https://queue.fal.run/{APP}" in urls, urls
    assert any(url.startswith(f"POST https://{rest_host(client)}/storage/upload/initiate") for url in urls), urls
