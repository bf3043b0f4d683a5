"""The burst's floor (``make bench-loadtest``, phase C): what N simultaneous submits cost the API alone.

A second API process on the phase's Redis, under a key prefix no worker serves (its requests are never
run), takes ``count`` submits sent at the same instant by a minimal client (one asyncio connection each,
a hand-written HTTP/1.1 request: next to no CPU on the client side). Its CPU per submit, read from
``/proc``, bounds any burst on this machine: one API process answers submits one after another, so the
median of N simultaneous submits is answered no sooner than N/2 submits' CPU after they arrive, and a
request's overhead includes its submit.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bench.http_load import cpu_seconds
from core.settings import Settings
from stack.launcher import free_port, start_api, wait_until_ready

ENDPOINT_PATH = "/queue/fal-ai/bitdance"
BODY = json.dumps({"prompt": "a lighthouse at dusk", "num_images": 1}).encode()


@dataclass
class SubmitFloor:
    submits: int
    accepted: int
    api_cpu_ms_per_submit: float
    latency_p50_s: float
    latency_max_s: float

    @property
    def median_floor_s(self) -> float:
        """How long one API process needs, at the least, for the first half of the submits."""
        return self.submits / 2 * self.api_cpu_ms_per_submit / 1000


async def one_submit(host: str, port: int, opened: asyncio.Event) -> tuple[int, float]:
    """Connect, wait for every connection to be open, send one submit, read the status line and close."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {ENDPOINT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await opened.wait()
    began = time.perf_counter()
    writer.write(head + BODY)
    await writer.drain()
    status_line = await reader.readline()
    took = time.perf_counter() - began
    await reader.read()  # the rest, until the API closes
    writer.close()
    parts = status_line.split()
    return (int(parts[1]) if len(parts) > 1 else 0), took


async def burst(host: str, port: int, count: int, api_pid: int) -> tuple[list[tuple[int, float]], float]:
    """The answers (status, seconds) and the API's CPU seconds from the first byte sent to the last answer."""
    opened = asyncio.Event()
    tasks = [asyncio.create_task(one_submit(host, port, opened)) for _ in range(count)]
    await asyncio.sleep(0.5)  # every connection accepted (not counted) before the first byte of a request
    before = cpu_seconds([api_pid])
    opened.set()
    answers = await asyncio.gather(*tasks)
    return answers, cpu_seconds([api_pid]) - before


def measure_submit_floor(settings: Settings, log_dir: Path, count: int) -> SubmitFloor:
    """``count`` simultaneous submits to a second API (own port, own key prefix) on ``settings.redis_url``."""
    floor_settings = settings.model_copy(update={"port": free_port(), "key_prefix": f"{settings.key_prefix}-floor"})
    api = start_api(floor_settings, log_path=log_dir / "api-floor.log")
    try:
        wait_until_ready(f"http://{floor_settings.host}:{floor_settings.port}", timeout_s=60, processes=(api,))
        answers, cpu_s = asyncio.run(burst(floor_settings.host, floor_settings.port, count, api.pid))
    finally:
        api.stop()
    latencies = sorted(took for _, took in answers)
    return SubmitFloor(
        submits=count,
        accepted=sum(1 for status, _ in answers if status == 200),
        api_cpu_ms_per_submit=1000 * cpu_s / count,
        latency_p50_s=latencies[len(latencies) // 2],
        latency_max_s=latencies[-1],
    )
