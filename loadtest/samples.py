"""One request's measurements, as a flow records them and the report reads them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("submit", "queue_wait", "inference", "result", "run", "download", "e2e")
PHASE_TITLES = {
    "submit": "submit",
    "queue_wait": "queue wait (submitted -> IN_PROGRESS)",
    "inference": "inference (IN_PROGRESS -> COMPLETED)",
    "result": "result fetch",
    "run": "sync run (POST until the output)",
    "download": "image download",
    "e2e": "end to end",
}


@dataclass
class Sample:
    """Times in seconds; ``error`` is the kind (``http_503``, ``runner_server_error``, ``lost`` ...) or None."""

    started_at: float  # wall clock (epoch seconds) when the flow started
    request_id: str | None = None
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    images: int = 0
    image_bytes: int = 0
    reported_inference_s: float | None = None  # metrics.inference_time from the COMPLETED status
    completed: bool = False  # the endpoint reported COMPLETED (ok or with an error)
    in_progress_seen: bool = False  # False: queue_wait/inference split estimated from inference_time

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def finished_at(self) -> float:
        return self.started_at + self.phases.get("e2e", 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        return cls(**data)
