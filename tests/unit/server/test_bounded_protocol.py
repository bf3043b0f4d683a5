"""``server.bounded_protocol`` leans on uvicorn's and httptools' internals: these tests fail when a version
bump moves what it overrides, and check the pieces that need no socket (limits, refusal bytes, pickling).
The behaviour over real sockets is ``tests/integration/test_http_limits.py``."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import pickle
import tomllib
from importlib.metadata import version
from pathlib import Path

import httptools
import pytest
import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core.errors import HeaderFieldsTooLargeError, RequestHeaderTimeoutError, ServiceUnavailableError
from core.settings import Settings
from server.__main__ import uvicorn_options
from server.bounded_protocol import OVERRIDDEN, BoundedHttpToolsProtocol, bounded_http_protocol
from server.http_limits import FILES_RESERVED, MIN_CONNECTIONS, HttpLimits, refusal_response

ROOT = Path(__file__).resolve().parents[3]

# sha256 (first 16 hex digits) of the source of each uvicorn 0.55.0 method that BoundedHttpToolsProtocol
# overrides or whose body it copies. A bump that changes one fails here: re-read the new method against
# server/bounded_protocol.py (does the override still hold?), then record its new fingerprint.
UVICORN_SOURCES = {
    "__init__": "4f08999410347141",
    "connection_made": "6efb565ff3d36b91",
    "connection_lost": "c91a4c9bf2e29c55",
    "data_received": "010a7ae59a5d3b1a",
    "on_message_begin": "96d377fdc7c2baef",
    "on_headers_complete": "1ea8589acfad92d8",
    "on_body": "dba9c32aeba35b6a",
    "on_message_complete": "1fbad42dc31fc01f",
    "on_response_complete": "64e254f28e389e76",
}
# What the subclass reads or calls on uvicorn's protocol besides the methods it overrides.
UVICORN_MEMBERS = ("_unset_keepalive_if_required", "send_400_response", "_should_upgrade", "handle_websocket_upgrade")
ADDED_CALLBACKS = ("on_chunk_header", "on_chunk_complete")  # httptools callbacks uvicorn does not use
UVICORN_ATTRIBUTES = ("pipeline", "flow", "cycle", "parser", "connections", "server_state", "app_state", "loop")


def pinned(name: str) -> str:
    """The exact version pyproject.toml pins ``name`` to."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == name]
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{name} must be pinned exactly: server.bounded_protocol subclasses it"
    return spec.version


@pytest.mark.parametrize("name", ["uvicorn", "httptools"])
def test_the_installed_versions_are_the_pinned_ones(name: str) -> None:
    assert version(name) == pinned(name)


def test_every_overridden_method_is_still_uvicorns_as_read() -> None:
    assert set(OVERRIDDEN) | {"__init__"} == set(UVICORN_SOURCES)
    for name, fingerprint in UVICORN_SOURCES.items():
        assert name in vars(HttpToolsProtocol), f"uvicorn's HttpToolsProtocol no longer defines {name}"
        source = inspect.getsource(getattr(HttpToolsProtocol, name))
        assert hashlib.sha256(source.encode()).hexdigest()[:16] == fingerprint, f"uvicorn changed {name}"
        assert name in vars(BoundedHttpToolsProtocol)
    for name in UVICORN_MEMBERS:
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    for name in ADDED_CALLBACKS:  # ours alone: a uvicorn that grew them would be shadowed
        assert not hasattr(HttpToolsProtocol, name) and name in vars(BoundedHttpToolsProtocol), name


def test_the_attributes_the_subclass_reads_exist() -> None:
    async def app(scope: object, receive: object, send: object) -> None: ...

    async def build() -> HttpToolsProtocol:
        config = uvicorn.Config(app, lifespan="off", log_config=None)
        return BoundedHttpToolsProtocol(config, ServerState(), {}, limits=HttpLimits())

    protocol = asyncio.run(build())
    for name in UVICORN_ATTRIBUTES:
        assert hasattr(protocol, name), name
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)


def test_httptools_stops_at_an_exception_in_a_callback_and_stays_stopped() -> None:
    """What the head and pipeline bounds rely on: raising in on_headers_complete stops llhttp there."""

    class Stop(Exception):
        pass

    class Callbacks:
        heads = 0

        def on_headers_complete(self) -> None:
            self.heads += 1
            raise Stop

    callbacks = Callbacks()
    parser = httptools.HttpRequestParser(callbacks)
    with pytest.raises(httptools.HttpParserCallbackError) as raised:
        parser.feed_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(raised.value.__context__, Stop) and callbacks.heads == 1
    with pytest.raises(httptools.HttpParserError):
        parser.feed_data(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert callbacks.heads == 1


def test_the_api_and_the_benchmarks_hello_world_get_the_bounded_protocol() -> None:
    settings = Settings(_env_file=None, max_header_bytes=4096, header_timeout_s=3, max_connections=100)  # type: ignore[call-arg]
    http = uvicorn_options(settings, "127.0.0.1")["http"]
    assert http.func is BoundedHttpToolsProtocol
    assert http.keywords["limits"] == HttpLimits(4096, 3.0, 100)
    config = uvicorn.Config("server.app:create_app", **uvicorn_options(settings, "127.0.0.1"))
    assert pickle.loads(pickle.dumps(config.http)).keywords["limits"] == HttpLimits(4096, 3.0, 100)  # spawn


def test_the_connection_bound_fits_the_open_files_limit() -> None:
    settings = Settings(_env_file=None, max_connections=4096)  # type: ignore[call-arg]
    assert HttpLimits.from_settings(settings, open_files=1 << 20).max_connections == 4096
    lowered = HttpLimits.from_settings(settings, open_files=1024)  # a container's usual soft limit
    assert lowered.hard_connections + FILES_RESERVED <= 1024 < lowered.hard_connections + FILES_RESERVED + 16
    assert lowered.max_connections == 683
    assert HttpLimits.from_settings(settings, open_files=100).max_connections == MIN_CONNECTIONS
    assert bounded_http_protocol(lowered).keywords == {"limits": lowered}


@pytest.mark.parametrize(
    "error,status,error_type",
    [
        (HeaderFieldsTooLargeError("Request header fields larger than 65536 bytes"), 431, "bad_request"),
        (RequestHeaderTimeoutError(), 408, "request_timeout"),
        (ServiceUnavailableError("Too many", headers={"Retry-After": "1"}), 503, "runner_scheduling_failure"),
    ],
)
def test_refusals_are_whole_answers_in_fals_error_shape(error: Exception, status: int, error_type: str) -> None:
    raw = refusal_response(error)  # type: ignore[arg-type]
    head, body = raw.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status_line.startswith(f"HTTP/1.1 {status} ")
    assert json.loads(body) == {"detail": str(error), "error_type": error_type}
    assert int(headers["content-length"]) == len(body)
    assert headers["x-fal-error-type"] == error_type and headers["connection"] == "close"
    assert headers["content-type"] == "application/json" and "x-fal-request-id" not in headers
    assert (headers.get("retry-after") == "1") == (status == 503)
