"""Load tools of ``bench.api_capacity``: drive ``wrk``, hold many status streams open, read a process's CPU time.

``wrk`` (Debian's package) is the load generator for request rates, so that our API and the
hello-world app are measured by the same, much faster than Python, client. Status streams are held
by a minimal asyncio client (one socket per stream, no HTTP library) so that thousands fit in the
benchmark process. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_TOTAL = re.compile(r"^\s+(\d+) requests in", re.MULTILINE)
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
DELAY_JITTER = 0.2  # a poller waits 0.8x to 1.2x its interval (see lua_script)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found: `make bench-api` installs it (apt-get install wrk)")
    return found


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured: requests/s, latency percentiles (ms), failures."""

    requests_per_s: float
    requests: int
    percentiles_ms: dict[str, float]
    failures: int
    failure_kinds: str = ""

    def latency(self) -> str:
        return " / ".join(f"{self.percentiles_ms.get(p, float('nan')):.1f}" for p in ("50", "90", "99"))


def parse_wrk(output: str) -> WrkResult:
    rate = WRK_RATE.search(output)
    total = WRK_TOTAL.search(output)
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = WRK_NON_2XX.search(output)
    sockets = WRK_SOCKET_ERRORS.search(output)
    failures = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    kinds = ", ".join(m.group(0) for m in (non_2xx, sockets) if m is not None)
    percentiles = {p: float(value) * TO_MS[unit] for p, value, unit in WRK_LATENCY.findall(output)}
    return WrkResult(float(rate.group(1)), int(total.group(1)), percentiles, failures, kinds)


def lua_script(
    *,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str],
    paths: Sequence[str] = (),
    delay_ms: int = 0,
) -> str:
    """A wrk script: method, body and headers; requests spread over ``paths``; ``delay_ms`` between requests.

    The delay is drawn between 0.8x and 1.2x ``delay_ms`` (mean ``delay_ms``): wrk opens every
    connection in the same instant, and with a fixed delay its pollers would poll in lockstep for the
    whole run (a burst of all of them every interval), which independent clients never do."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if paths:
        lines.append("paths = {" + ", ".join(json.dumps(p) for p in paths) + "}")
        lines.append("request = function() return wrk.format(nil, paths[math.random(#paths)]) end")
    if delay_ms:
        lo, hi = round(delay_ms * (1 - DELAY_JITTER)), round(delay_ms * (1 + DELAY_JITTER))
        lines.append(f"delay = function() return math.random({lo}, {hi}) end")
    return "\n".join(lines) + "\n"


def run_wrk(url: str, *, connections: int, duration_s: float, script: str, threads: int = 1) -> WrkResult:
    """``wrk -t{threads} -c{connections} -d{duration}s --latency`` against ``url`` with ``script``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s"]
        argv += ["--latency", "--timeout", "10s", "-s", handle.name, url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
        return parse_wrk(done.stdout)
    finally:
        os.unlink(handle.name)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds these processes have used so far (Linux /proc; a process gone counts 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def process_tree(pid: int) -> list[int]:
    """The process and its children (the API's uvicorn workers), from /proc."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class StatusStream:
    """One open ``/status/stream`` connection and the events it received (with their arrival times)."""

    request_id: str
    events: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    closed_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def open_stream(host: str, port: int, path: str, key: str, stream: StatusStream) -> asyncio.Task[None]:
    """Send the GET, check the 200 and the event-stream type, then read events in a task."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Key {key}", "Accept: text/event-stream"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    if not head.startswith("HTTP/1.1 200") or "text/event-stream" not in head:
        writer.close()
        raise RuntimeError(f"status stream refused: {head.splitlines()[0] if head else head!r}")
    chunked = "transfer-encoding: chunked" in head.lower()

    async def read_events() -> None:
        buffer = b""
        try:
            while True:
                if chunked:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    buffer += data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                    buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if event.startswith(b"data: "):
                        stream.events.append((time.perf_counter(), json.loads(event[6:])))
                        stream.changed.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            stream.closed_at = time.perf_counter()
            stream.changed.set()
            writer.close()

    return asyncio.create_task(read_events())
