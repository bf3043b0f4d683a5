"""The options of one load-test run, as one plain object (sent as-is to Locust workers)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

FAL_RUN_HOST = "fal.run"
FAL_QUEUE_HOST = "queue.fal.run"


@dataclass
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    endpoint: str = "fal-ai/bitdance"
    queue_url: str | None = None  # default: {url}/queue, or https://queue.fal.run for fal's own host
    key: str | None = None  # FAL_KEY
    flow: Literal["queue", "run"] = "queue"
    status: Literal["poll", "stream"] = "poll"
    client: Literal["http", "fal-client"] = "http"
    poll_interval_s: float = 0.1  # fal-client's DEFAULT_QUEUE_POLL_INTERVAL
    concurrency: int | None = None  # closed loop: this many users, each one request at a time
    start_jitter_s: float = 0.0  # closed loop: each user waits a random 0..this before its first request
    rate: float | None = None  # open loop: Poisson arrivals per second
    requests: int | None = None
    duration_s: float | None = None
    timeout_s: float = 600.0  # a request not COMPLETED by then counts as lost
    download: bool = True
    with_logs: bool = False
    slo_s: float | None = None
    ca_file: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if self.key is None:
            self.key = os.environ.get("FAL_KEY") or None
        if self.ca_file is None:
            self.ca_file = os.environ.get("SSL_CERT_FILE") or None

    def check(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one load shape: --concurrency N (closed loop) or --rate R (open loop)")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give --requests N or --duration SECONDS (or both)")
        if not self.inputs:
            raise ValueError("no inputs")

    @property
    def is_fal_hosted(self) -> bool:
        return urlsplit(self.url).hostname in (FAL_RUN_HOST, FAL_QUEUE_HOST)

    @property
    def queue_base(self) -> str:
        if self.queue_url:
            return self.queue_url.rstrip("/")
        if self.is_fal_hosted:
            return f"https://{FAL_QUEUE_HOST}"
        host = urlsplit(self.url).hostname or ""
        return self.url if host.startswith("queue.") else f"{self.url}/queue"

    @property
    def submit_url(self) -> str:
        return f"{self.queue_base}/{self.endpoint}"

    @property
    def run_url(self) -> str:
        return f"{self.url}/{self.endpoint}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"} if self.key else {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """For the report: no key, and the input count instead of the inputs."""
        data = self.to_dict()
        data["key"] = "***" if self.key else None
        data["inputs"] = len(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadConfig:
        return cls(**data)
