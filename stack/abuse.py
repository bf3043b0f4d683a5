"""The abuse scenarios of ``make chaos`` (issue 19): what a hostile client does to the API's HTTP server,
bounded and on loopback only, with the API's memory and ``/health/live`` latency watched meanwhile.

- **big-headers**: request heads of 100 MB streamed in 256 KB pieces (before: each was read whole on the
  event loop, ``/health/live`` stalled for seconds); designed answer: 431 within a read of the limit.
- **slowloris**: many connections that never finish their head (before: held forever until the API ran
  out of descriptors); designed: 408 at the header timeout, or pushed out (408) by newer connections.
- **pipelining**: connections pipelining thousands of requests without reading the answers (before:
  every request parsed and queued, ~100 MB/s of growth); designed: 17 answers, then the connection
  closes (the client resends the rest, RFC 9112 9.3.2).
- **connection-flood**: every connection slot held by a request in flight (a slow request body), then
  more connections; designed: 503 in fal's shape, or a reset far beyond the bound. ``/health/live`` is
  refused too while every slot is busy (the bound protects the process, not a probe): reported, not a failure.

- **key-flood**: one key submitting from several connections as fast as it can (before: no per-key quota
  and a bound read before the write, 5,819 accepted in 40 s); designed: 429 with ``Retry-After`` past the
  key's ``BITDANCE_MAX_QUEUED_PER_KEY``. Every accepted request is then cancelled and must end COMPLETED
  (lost otherwise).

Each prints: what was sent, refused as designed, served, 5xx (unexpected), lost (neither answered nor
closed), and the API's RSS and ``/health/live`` latency during it.
"""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ANSWER = re.compile(rb"HTTP/1\.1 (\d{3}) ")
PROBE_INTERVAL_S = 0.05
SETTLE_S = 1.0


@dataclass
class AbuseScale:
    """How big each scenario is (``make chaos`` defaults; CI runs ``AbuseScale.short()``)."""

    big_headers: int = 4
    big_header_bytes: int = 100 * 1024 * 1024
    slowloris: int = 2000
    pipelining_connections: int = 20
    pipelined_requests: int = 100_000
    pipelining_hold_s: float = 5.0
    flood_extra: int = 200
    key_flood_clients: int = 8
    key_flood_requests: int = 400

    @classmethod
    def short(cls) -> AbuseScale:
        return cls(big_headers=1, big_header_bytes=20 * 1024 * 1024, slowloris=200, pipelining_connections=4,
                   pipelined_requests=20_000, pipelining_hold_s=2.0, flood_extra=40,
                   key_flood_clients=4, key_flood_requests=60)  # fmt: skip


@dataclass
class AbuseTally:
    """What one scenario did and what the API went through meanwhile."""

    scenario: str
    unit: str  # what the counts count: connections or requests
    sent: int = 0
    refused: int = 0  # answered or closed as the design says (431, 408, 503, closed after the pipeline)
    served: int = 0
    errors: int = 0  # 5xx the design does not call for
    lost: int = 0  # neither answered nor closed
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    live_ms: list[float] = field(default_factory=list)
    live_failed: int = 0
    live_refusal_expected: bool = False

    @property
    def is_clean(self) -> bool:
        return not self.errors and not self.lost and (self.live_refusal_expected or not self.live_failed)

    def live_summary(self) -> str:
        if not self.live_ms:
            return f"no answer ({self.live_failed} failed)"
        ordered = sorted(self.live_ms)
        failed = f", {self.live_failed} failed" if self.live_failed else ""
        return f"p50 {statistics.median(ordered):.0f} ms, max {ordered[-1]:.0f} ms ({len(ordered)} probes{failed})"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def watched(tally: AbuseTally, url: str, pid: int) -> Iterator[None]:
    """Probe ``/health/live`` and sample the API's RSS on a thread while the scenario runs."""
    tally.rss_before_mb = tally.rss_peak_mb = rss_mb(pid)
    done = threading.Event()

    def probe() -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time, as an orchestrator's
        with httpx.Client(timeout=30, limits=fresh) as client:
            while not done.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(f"{url}/health/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    tally.live_ms.append(1000 * (time.monotonic() - started))
                else:
                    tally.live_failed += 1
                tally.rss_peak_mb = max(tally.rss_peak_mb, rss_mb(pid))
                done.wait(PROBE_INTERVAL_S)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (tally.live_ms or tally.live_failed) and time.monotonic() < deadline:
        time.sleep(0.01)  # the first probe answered: it runs before and throughout the scenario
    try:
        yield
        time.sleep(SETTLE_S)  # and a little after: what the scenario left behind
    finally:
        done.set()
        thread.join(60)
        tally.rss_peak_mb = max(tally.rss_peak_mb, rss_mb(pid))


def read_answers(sock: socket.socket, timeout_s: float) -> tuple[list[int], bool]:
    """The status codes the server sent, and whether it closed (EOF or reset) within ``timeout_s``."""
    data, closed = b"", False
    deadline = time.monotonic() + timeout_s
    sock.setblocking(True)
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(1 << 20)
            if not chunk:
                closed = True
                break
            data += chunk
    except TimeoutError:
        pass
    except OSError:  # reset
        closed = True
    return [int(code) for code in ANSWER.findall(data)], closed


def count_answer(tally: AbuseTally, codes: list[int], closed: bool, designed: tuple[int, ...]) -> None:
    if any(code in designed for code in codes):
        tally.refused += 1
    elif any(code >= 500 for code in codes):
        tally.errors += 1
    elif codes:
        tally.served += 1
    elif closed:
        tally.refused += 1  # closed without an answer: a reset beyond the bound, or a quiet close
    else:
        tally.lost += 1


def big_headers(host: str, port: int, scale: AbuseScale, tally: AbuseTally) -> None:
    piece = b"a" * (256 * 1024)
    for _ in range(scale.big_headers):
        tally.sent += 1
        with socket.create_connection((host, port), timeout=30) as sock:
            try:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(scale.big_header_bytes // len(piece)):
                    sock.sendall(piece)
            except OSError:
                pass  # the server answered and stopped reading
            codes, closed = read_answers(sock, 30)
        count_answer(tally, codes, closed, designed=(431,))


def slowloris(host: str, port: int, scale: AbuseScale, tally: AbuseTally, header_timeout_s: float) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(scale.slowloris):
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            held.append(sock)
            tally.sent += 1
        deadline = time.monotonic() + header_timeout_s + 5
        for sock in held:
            codes, closed = read_answers(sock, max(deadline - time.monotonic(), 0.1))
            count_answer(tally, codes, closed, designed=(408,))
    finally:
        for sock in held:
            sock.close()


def pipelining(host: str, port: int, scale: AbuseScale, tally: AbuseTally) -> None:
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    burst = request * scale.pipelined_requests
    socks = [socket.create_connection((host, port), timeout=30) for _ in range(scale.pipelining_connections)]
    written = [0] * len(socks)
    try:
        for sock in socks:
            sock.setblocking(False)
        deadline = time.monotonic() + scale.pipelining_hold_s
        while time.monotonic() < deadline:  # write as much as the server takes, read nothing
            for index, sock in enumerate(socks):
                if written[index] < len(burst):
                    try:
                        written[index] += sock.send(burst[written[index] : written[index] + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        written[index] = len(burst)
            time.sleep(0.005)
        for index, sock in enumerate(socks):
            sent = written[index] // len(request)
            codes, closed = read_answers(sock, 30)
            answered = sum(1 for code in codes if code == 200)
            tally.sent += sent
            tally.served += answered
            tally.errors += sum(1 for code in codes if code >= 500)
            if closed:
                tally.refused += max(sent - answered, 0)  # unanswered, the connection closed: resent by a client
            else:
                tally.lost += max(sent - answered, 0)
    finally:
        for sock in socks:
            sock.close()


def connection_flood(host: str, port: int, scale: AbuseScale, tally: AbuseTally, max_connections: int) -> None:
    """``max_connections`` requests in flight (a body that never finishes), then ``flood_extra`` more."""
    busy: list[socket.socket] = []
    head = b"POST /queue/fal-ai/bitdance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        for _ in range(max_connections):
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(head + b"Content-Length: 100000\r\n\r\n{")  # the rest of the body never comes
            busy.append(sock)
        time.sleep(0.5)  # every slot now holds a request in flight
        for _ in range(scale.flood_extra):
            tally.sent += 1
            try:
                with socket.create_connection((host, port), timeout=30) as sock:
                    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    codes, closed = read_answers(sock, 10)
            except OSError:
                codes, closed = [], True  # reset at once: beyond the hard bound
            count_answer(tally, codes, closed, designed=(503,))
    finally:
        for sock in busy:
            sock.close()


FLOOD_PATH = "/queue/fal-ai/bitdance"
FLOOD_BODY = {"prompt": "flood " * 200, "image_size": "square", "num_inference_steps": 10}
FLOOD_SETTLE_S = 60.0


def key_flood(url: str, scale: AbuseScale, tally: AbuseTally) -> None:
    """``key_flood_clients`` connections of one key share ``key_flood_requests`` submits; then every
    accepted request is cancelled and must end COMPLETED within ``FLOOD_SETTLE_S``."""
    accepted: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": "Key flood"}

    def submit(count: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for _ in range(count):
                try:
                    response = client.post(FLOOD_PATH, json=FLOOD_BODY)
                except httpx.HTTPError:
                    with lock:
                        tally.sent += 1
                        tally.lost += 1  # neither answered nor refused
                    continue
                with lock:
                    tally.sent += 1
                    if response.status_code == 200:
                        tally.served += 1
                        accepted.append(str(response.json()["request_id"]))
                    elif response.status_code == 429 and response.headers.get("retry-after"):
                        tally.refused += 1
                    else:
                        tally.errors += 1  # neither served nor refused as designed

    share, extra = divmod(scale.key_flood_requests, scale.key_flood_clients)
    threads = [
        threading.Thread(target=submit, args=(share + (i < extra),), daemon=True)
        for i in range(scale.key_flood_clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for rid in accepted:
            client.put(f"{FLOOD_PATH}/requests/{rid}/cancel")
        deadline = time.monotonic() + FLOOD_SETTLE_S
        pending = set(accepted)
        while pending and time.monotonic() < deadline:
            for rid in list(pending):
                response = client.get(f"{FLOOD_PATH}/requests/{rid}/status")
                if response.status_code in (200, 202) and response.json().get("status") == "COMPLETED":
                    pending.discard(rid)
            time.sleep(0.2)
        tally.lost += len(pending)


def run_abuse(
    url: str, api_pid: Callable[[], int | None], scale: AbuseScale, max_connections: int, header_timeout_s: float
) -> list[AbuseTally]:
    """Every scenario against the API at ``url`` (``api_pid`` finds its process, for its memory)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    scenarios: list[tuple[AbuseTally, Callable[[AbuseTally], None]]] = [
        (AbuseTally("big-headers", "connections"), lambda t: big_headers(host, int(port), scale, t)),
        (AbuseTally("slowloris", "connections"), lambda t: slowloris(host, int(port), scale, t, header_timeout_s)),
        (AbuseTally("pipelining", "requests"), lambda t: pipelining(host, int(port), scale, t)),
        (
            AbuseTally("connection-flood", "connections", live_refusal_expected=True),
            lambda t: connection_flood(host, int(port), scale, t, max_connections),
        ),
        (AbuseTally("key-flood", "requests"), lambda t: key_flood(url, scale, t)),
    ]
    tallies = []
    for tally, scenario in scenarios:
        pid = api_pid()
        if pid is None:
            raise RuntimeError("the API is not running")
        print(f"  abuse: {tally.scenario} ...", flush=True)
        with watched(tally, url, pid):
            scenario(tally)
        tallies.append(tally)
    return tallies


def print_abuse_table(tallies: list[AbuseTally]) -> None:
    header = f"{'abuse scenario':<18}{'unit':>12}{'sent':>9}{'refused':>9}{'served':>8}{'5xx':>5}{'lost':>6}"
    header += f"   {'API RSS MB before/peak':<24}/health/live during"
    print(header)
    print("-" * len(header))
    for t in tallies:
        rss = f"{t.rss_before_mb:.0f} / {t.rss_peak_mb:.0f}"
        print(
            f"{t.scenario:<18}{t.unit:>12}{t.sent:>9}{t.refused:>9}{t.served:>8}{t.errors:>5}{t.lost:>6}"
            f"   {rss:<24}{t.live_summary()}"
        )
    for t in tallies:
        if t.live_refusal_expected and t.live_failed:
            print(f"  {t.scenario}: /health/live refused {t.live_failed} times while every slot was busy (as designed)")
