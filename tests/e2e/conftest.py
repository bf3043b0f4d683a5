"""The e2e tests reuse the session stack of ``tests/conftest.py`` behind its HTTPS API.

``tls_api_server`` is an API process serving HTTPS with a locally generated CA (as ``make run
TLS=1`` does) in front of the session's real ``redis-server`` and CPU worker on the tiny 16x
checkpoint, all started with the ``stack.launcher`` helpers of ``make run``. API keys are configured
there, so authentication is exercised. The clients reach it as ``127.0.0.1:<port>``, the address
README's client settings use (the certificate covers it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.e2e_support import StackEndpoint, WebhookReceiver


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the published fal clients against a running stack")


@pytest.fixture(scope="session")
def e2e_stack(tls_api_server: Any) -> StackEndpoint:
    settings = tls_api_server.settings
    plain_keys = [key for key in settings.api_keys if ":" not in key]
    pairs = [key for key in settings.api_keys if ":" in key]
    assert plain_keys, "the e2e tests expect a plain key (FAL_KEY) among the server's API keys"
    return StackEndpoint(
        host_port=f"127.0.0.1:{settings.port}",
        ca_file=tls_api_server.ca_file,
        api_key=plain_keys[0],
        key_pair=pairs[0] if pairs else None,
    )


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
