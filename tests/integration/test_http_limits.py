"""Issue 19 item 1 over real sockets: the API (``python -m server``, uvicorn + httptools) bounds request
heads, the time to send them, its connections and pipelining (``server.http_limits``).

Each test failed before the bounds existed: a 100 MB header was read whole while ``/health/live``
stalled, half-sent heads were held forever, any number of connections were accepted, and pipelined
requests were parsed without end. Throughput and latency figures belong to ``make chaos`` and
``make bench-api``; the bounds here are generous enough for a loaded machine.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.launcher import ManagedProcess, RedisProcess, base_url, free_port, start_api, wait_until_ready
from tests.conftest import KEY_A, TlsApi, stack_settings
from tests.integration.helpers import APP, FAST, poll_until

HEAD_LIMIT = 65536
HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
ANSWER = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@dataclass
class BoundedApi:
    url: str
    port: int
    api: ManagedProcess
    log_path: Path

    def rss_bytes(self) -> int:
        """Resident memory of the API process."""
        for line in Path(f"/proc/{self.api.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def connect(self, timeout_s: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


@contextmanager
def bounded_api_process(redis_server: RedisProcess, root: Path, **overrides: object) -> Iterator[BoundedApi]:
    values: dict[str, object] = {
        "key_prefix": f"httplimits{free_port()}",  # no worker serves its queue: requests stay queued
        "header_timeout_s": HEADER_TIMEOUT_S,
        "stream_keepalive_s": 0.5,
        **overrides,
    }
    settings = stack_settings(redis_server, root / "storage", **values)
    log_path = root / "api.log"
    api = start_api(settings, None, log_path)
    try:
        wait_until_ready(base_url(settings), processes=(api,))
        yield BoundedApi(base_url(settings), settings.port, api, log_path)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def bounded_api(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoundedApi]:
    """The API with a 1 s header timeout (other limits at their defaults)."""
    with bounded_api_process(redis_server, tmp_path_factory.mktemp("bounded-api")) as api:
        yield api


@pytest.fixture(scope="module")
def few_connections_api(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoundedApi]:
    """The API with room for 8 connections and a header timeout long enough that only the bound acts."""
    root = tmp_path_factory.mktemp("few-connections-api")
    with bounded_api_process(redis_server, root, max_connections=MAX_CONNECTIONS, header_timeout_s=30.0) as api:
        yield api


def head(path: str = "/health/live", pad: int = 0, method: str = "GET", extra: bytes = b"") -> bytes:
    padding = b"X-Pad: " + b"a" * pad + b"\r\n" if pad else b""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + padding + extra + b"\r\n"


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``timeout_s``."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True
    return data, False


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in ANSWER.findall(data)]


def fal_error(data: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, JSON body) of a single answer."""
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head_bytes.decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body[: int(headers["content-length"])])


def send_pieces(sock: socket.socket, data: bytes, size: int, pause_s: float = 0.0) -> None:
    for start in range(0, len(data), size):
        try:
            sock.sendall(data[start : start + size])
        except (BrokenPipeError, ConnectionResetError):
            return  # the server answered and closed: what it said is read next
        if pause_s:
            time.sleep(pause_s)


# --- head size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [None, 1000], ids=["one write", "1000-byte pieces"])
def test_a_head_over_the_limit_gets_a_431_in_fals_shape(bounded_api: BoundedApi, pieces: int | None) -> None:
    oversized = head(pad=HEAD_LIMIT + 4000)
    with bounded_api.connect() as sock:
        send_pieces(sock, oversized, pieces or len(oversized))
        data, closed = read_until_closed(sock, 10)
    status, headers, body = fal_error(data)  # before: 200 (the whole head accepted)
    assert status == 431 and closed
    assert body == {"detail": f"Request header fields larger than {HEAD_LIMIT} bytes", "error_type": "bad_request"}
    assert headers["x-fal-error-type"] == "bad_request" and headers["connection"] == "close"


def test_heads_under_the_limit_pass_however_they_are_split(bounded_api: BoundedApi) -> None:
    """No false 431: heads near the limit, in small pieces, behind a large body and pipelined behind it."""
    near = head(pad=HEAD_LIMIT - 2000)
    with bounded_api.connect() as sock:
        send_pieces(sock, near, 1000, pause_s=0.001)
        assert statuses(sock.recv(65536)) == [200]
    body = b"b" * 600_000
    post = head("/health/live", pad=HEAD_LIMIT - 2000, method="POST", extra=b"Content-Length: %d\r\n" % len(body))
    both = post + body + head(pad=HEAD_LIMIT - 2000, extra=b"Connection: close\r\n")
    for size in (len(both), 7000):
        with bounded_api.connect() as sock:
            send_pieces(sock, both, size)
            data, closed = read_until_closed(sock, 10)
        assert statuses(data) == [401, 200] and closed, size  # the POST reached the app (no key), then the GET


def test_a_100_mb_head_is_cut_short_and_the_api_stays_responsive(bounded_api: BoundedApi) -> None:
    """Before: all 100 MB were read (``bytes +=`` on the event loop) and /health/live stalled for seconds."""
    rss_before = bounded_api.rss_bytes()
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.monotonic()
                client.get(f"{bounded_api.url}/health/live").raise_for_status()
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    poll_until(lambda: latencies, timeout_s=10)
    sent = 0
    piece = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (256 * 1024 - 45)
    with bounded_api.connect() as sock:
        try:
            while sent < 100 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
                piece = b"a" * (256 * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = read_until_closed(sock, 10)
    time.sleep(0.5)
    done.set()
    prober.join(30)
    assert statuses(data) == [431]
    assert sent < 32 * 1024 * 1024, sent  # the limit plus what the kernel's socket buffers held
    assert bounded_api.rss_bytes() - rss_before < 50 * 1024 * 1024
    assert latencies and max(latencies) < 2.0, max(latencies)  # before: 6 s and more


def test_endless_trailers_of_a_chunked_body_are_cut_short(bounded_api: BoundedApi) -> None:
    """Trailers (headers after a chunked body) grew like a header value: read whole, without end."""
    sent = 0
    start = head(f"/queue/{APP}", method="POST", extra=f"Authorization: Key {KEY_A}\r\n".encode())
    start = start[:-2] + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with bounded_api.connect() as sock:
        try:
            sock.sendall(start + b"2\r\n{}\r\n0\r\nX-Trailer: ")
            piece = b"a" * (256 * 1024)
            while sent < 64 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, closed = read_until_closed(sock, 10)
    assert closed and sent < 32 * 1024 * 1024, sent  # before: all 64 MB read, the connection kept
    assert httpx.get(f"{bounded_api.url}/health/live", timeout=10).status_code == 200


def test_an_oversized_head_gets_its_431_over_tls(tls_api_server: TlsApi) -> None:
    """Over TLS there is no half-close: the answer is written, input dropped, then the connection closed."""
    context = ssl.create_default_context(cafile=str(tls_api_server.ca_file))
    port = int(tls_api_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            send_pieces(sock, head(pad=HEAD_LIMIT + 4000), 16384)
            data, closed = read_until_closed(sock, 10)
    status, _, body = fal_error(data)
    assert status == 431 and closed and body["error_type"] == "bad_request"


# --- head time ----------------------------------------------------------------------------------------


def test_a_half_sent_head_gets_a_408_after_the_header_timeout(bounded_api: BoundedApi) -> None:
    with bounded_api.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        data, closed = read_until_closed(sock, 10)  # before: never answered, never closed
    status, headers, body = fal_error(data)
    assert status == 408 and closed and time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
    assert body == {"detail": "Request header timeout", "error_type": "request_timeout"}
    assert headers["x-fal-error-type"] == "request_timeout"


def test_a_trickled_head_cannot_outlast_the_header_timeout(bounded_api: BoundedApi) -> None:
    """Slowloris: a byte now and then resets no timer (uvicorn's keep-alive timer is cancelled by any byte)."""
    with bounded_api.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        deadline = time.monotonic() + 10
        answered = b""
        while time.monotonic() < deadline and not answered:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.3)
            try:
                answered = sock.recv(65536)
            except TimeoutError:
                pass
    assert statuses(answered) == [408]


def test_a_connection_that_sends_nothing_is_closed_quietly(bounded_api: BoundedApi) -> None:
    with bounded_api.connect() as sock:
        data, closed = read_until_closed(sock, 10)
    assert closed and data == b""


def test_a_status_stream_outlives_the_header_timeout(bounded_api: BoundedApi) -> None:
    """A request in flight is never timed out: only connections waiting for a head are."""
    headers = {"Authorization": f"Key {KEY_A}"}
    rid = httpx.post(f"{bounded_api.url}/queue/{APP}", json={"prompt": "p", **FAST}, headers=headers).json()[
        "request_id"
    ]
    path = f"/queue/{APP}/requests/{rid}/status/stream"
    with httpx.Client(base_url=bounded_api.url, headers=headers, timeout=30) as client:
        with client.stream("GET", path) as stream:
            opened = time.monotonic()
            events = 0
            for line in stream.iter_lines():
                events += line.startswith(("data:", ":"))
                if time.monotonic() - opened > 4 * HEADER_TIMEOUT_S:
                    break
    assert time.monotonic() - opened > 4 * HEADER_TIMEOUT_S and events >= 3


# --- connections --------------------------------------------------------------------------------------


def test_at_the_bound_a_new_connection_pushes_out_the_oldest_waiting_one(few_connections_api: BoundedApi) -> None:
    held = [few_connections_api.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(b"GET /health/live HTTP/1.1\r\n")  # slowloris: heads never finished
            time.sleep(0.02)  # in this order: the first is the oldest
        with few_connections_api.connect() as newcomer:
            newcomer.sendall(head(extra=b"Connection: close\r\n"))
            answer, _ = read_until_closed(newcomer, 10)
        assert statuses(answer) == [200]
        data, closed = read_until_closed(held[0], 10)
        assert closed and statuses(data) == [408]  # before: held forever
        with httpx.Client(timeout=10) as client:  # /health/live answers throughout
            for _ in range(3):
                assert client.get(f"{few_connections_api.url}/health/live").status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_beyond_the_bound_with_every_connection_busy_a_new_one_gets_a_503(few_connections_api: BoundedApi) -> None:
    headers = {"Authorization": f"Key {KEY_A}"}
    with httpx.Client(base_url=few_connections_api.url, headers=headers, timeout=30) as client:
        ids = [client.post(f"/queue/{APP}", json={"prompt": "p", **FAST}).json()["request_id"] for _ in range(8)]
    # Earlier connections gone: the scrape's own is the only one left.
    poll_until(lambda: "bitdance_http_connections 1.0" in few_connections_api.metrics(), timeout_s=20)
    streams = []
    try:
        for rid in ids:  # every slot holds a request in flight (an open status stream)
            sock = few_connections_api.connect()
            path = f"/queue/{APP}/requests/{rid}/status/stream"
            sock.sendall(head(path, extra=f"Authorization: Key {KEY_A}\r\n".encode()))
            assert b"200 OK" in sock.recv(65536)
            streams.append(sock)
        with few_connections_api.connect() as newcomer:
            newcomer.sendall(head(extra=b"Connection: close\r\n"))
            data, closed = read_until_closed(newcomer, 10)
    finally:
        for sock in streams:
            sock.close()
    status, answer_headers, body = fal_error(data)  # before: 200 (no bound)
    assert status == 503 and closed and answer_headers["retry-after"] == "1"
    assert body == {"detail": "Too many connections, retry later", "error_type": "runner_scheduling_failure"}
    assert answer_headers["x-fal-error-type"] == "runner_scheduling_failure"


# --- pipelining ---------------------------------------------------------------------------------------


def test_pipelined_requests_are_bounded(bounded_api: BoundedApi) -> None:
    """16 may wait behind the one in flight; the 18th stops the parser and the connection closes after
    the 17 answers (the client resends the rest, RFC 9112 9.3.2)."""
    with bounded_api.connect() as sock:
        sock.sendall(head() * 40)
        data, closed = read_until_closed(sock, 10)
    assert statuses(data) == [200] * 17 and closed  # before: 40 answers


def test_pipelining_without_reading_does_not_grow_memory(bounded_api: BoundedApi) -> None:
    """Before: every pipelined request was parsed and queued (~100 MB/s for 20 such clients)."""
    rss_before = bounded_api.rss_bytes()
    burst = head() * 25_000  # ~1 MB of requests per connection, none of the answers read
    socks = [bounded_api.connect() for _ in range(4)]
    try:
        for sock in socks:
            sock.setblocking(False)
        deadline = time.monotonic() + 4
        offsets = [0] * len(socks)
        while time.monotonic() < deadline and min(offsets) < len(burst):
            for index, sock in enumerate(socks):
                try:
                    offsets[index] += sock.send(burst[offsets[index] : offsets[index] + 65536])
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
            time.sleep(0.01)
        time.sleep(1.0)
        grown = bounded_api.rss_bytes() - rss_before
    finally:
        for sock in socks:
            sock.close()
    assert grown < 40 * 1024 * 1024, grown
    assert httpx.get(f"{bounded_api.url}/health/live", timeout=10).status_code == 200


def test_every_process_of_workers_n_is_bounded(redis_server: RedisProcess, tmp_path: Path) -> None:
    """``--workers 2``: the limits reach each spawned process (they travel pickled with uvicorn's options)."""
    with bounded_api_process(redis_server, tmp_path, api_workers=2) as api:
        for _ in range(4):  # the kernel spreads the connections over both processes
            with api.connect() as sock:
                sock.sendall(head(pad=HEAD_LIMIT + 10))
                data, closed = read_until_closed(sock, 10)
            assert statuses(data) == [431] and closed
            with api.connect() as sock:
                sock.sendall(head() * 40)
                data, closed = read_until_closed(sock, 10)
            assert statuses(data) == [200] * 17 and closed


# --- what the operator sees ---------------------------------------------------------------------------


def test_refusals_are_counted_on_metrics_and_summarised_in_the_log(bounded_api: BoundedApi) -> None:
    def refused(reason: str) -> float:
        found = re.search(rf'^bitdance_http_refusals_total{{reason="{reason}"}} (\S+)$', bounded_api.metrics(), re.M)
        return float(found.group(1)) if found else 0.0

    before = refused("header_too_large")
    for _ in range(40):
        with bounded_api.connect() as sock:
            sock.sendall(head(pad=HEAD_LIMIT + 10))
            read_until_closed(sock, 10)
    assert refused("header_too_large") >= before + 40

    def summaries() -> list[str]:
        return [line for line in bounded_api.log_path.read_text().splitlines() if "refused or closed" in line]

    poll_until(lambda: any("header_too_large=" in line for line in summaries()), timeout_s=10)
    assert len(summaries()) < 20  # one line a second at most, not one per refusal
