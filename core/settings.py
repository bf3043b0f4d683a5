"""The one settings object shared by the API, the workers and the stack launcher.

Every value can be set with an environment variable prefixed ``BITDANCE_`` (``BITDANCE_REDIS_URL``,
``BITDANCE_API_KEYS=key1,id:secret`` ...) or in a ``.env`` file; entry points pass command-line
overrides as keyword arguments. The API and the workers read ``os.environ`` nowhere else.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SIMULATED_MODEL = "simulated"  # the model path that selects the simulated model (model.simulated)


def is_simulated_model(model_path: str | Path | None) -> bool:
    """True when the configured model is the simulated one (the literal name ``simulated``)."""
    return model_path is not None and str(model_path) == SIMULATED_MODEL


class Settings(BaseSettings):
    """Configuration of the BitDance server stack (API, workers, storage, queue)."""

    model_config = SettingsConfigDict(env_prefix="BITDANCE_", env_file=".env", extra="ignore")

    # --- network -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = Field(default=1, ge=1, description="API processes serving the one port (uvicorn workers).")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    public_base_url: str | None = Field(
        default=None, description="Override for absolute URLs (else built from the request)."
    )
    cors_allow_origins: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description=(
            "Origins whose pages may call the API from a browser (CORS), comma-separated; * for any. Unset: "
            "any origin when API keys are set (a page still needs a key), none without keys, so that a "
            "page on another site cannot drive an open server through its visitors' browsers. The "
            "playground is same-origin and needs none."
        ),
    )
    max_header_bytes: int = Field(
        default=65536,
        ge=1024,
        description=(
            "Largest request head (request line and headers) one request may send; beyond it the API answers "
            "431 in fal's error shape and closes the connection (server.http_limits)."
        ),
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How long a connection with no request in flight (new, or idle between requests) may take to send "
            "a complete request head; then 408 (or a quiet close if it sent nothing): slowloris connections."
        ),
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description=(
            "Open connections per API process. At the bound a new connection pushes out the oldest one with "
            "no request in flight; if every one has a request in flight it gets 503 in fal's error shape. "
            "Lowered to what the open-files limit allows."
        ),
    )

    # --- auth -----------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted keys: plain FAL_KEY strings or key_id:key_secret."
    )
    files_require_key: bool = Field(
        default=False, description="Serve /files only to the key that created them (else capability URLs)."
    )
    metrics_require_key: bool | None = Field(
        default=None,
        description=(
            "Serve /metrics only with a valid key. Unset: not required while the API listens on a loopback "
            "address, required when it listens anywhere else."
        ),
    )

    # --- redis / queue --------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_maxmemory: str = Field(
        default="1gb",
        pattern=r"^[0-9]+(?:[kKmMgG][bB]?)?$",
        description=(
            "``maxmemory`` of the Redis the launcher starts (``noeviction``): at it, submits are refused "
            "with 503 instead of Redis growing until the host kills it."
        ),
    )
    key_prefix: str = "bitdance"
    endpoint_id: str = "fal-ai/bitdance"
    job_timeout_s: int = 3600
    record_ttl_s: int = 7 * 24 * 3600
    lease_ttl_s: float = 30.0
    max_requeues: int = 1
    sweep_interval_s: float = 5.0
    max_queue_length: int | None = Field(
        default=1000,
        ge=0,
        description=(
            "Requests waiting in the queues (normal and low together) beyond which a submit is refused "
            "with 429; a client's ``fal_max_queue_length`` can only lower it."
        ),
    )
    max_queued_per_key: int = Field(
        default=0,
        ge=0,
        description="Requests one key may have waiting; past it a submit is refused with 429 (0: no limit).",
    )
    max_running_per_key: int = Field(
        default=0,
        ge=0,
        description=(
            "Requests of one key that run at once (fal's per-key concurrency); past it a request waits "
            "in the queue, it is not refused (0: no limit)."
        ),
    )
    queue_full_retry_after_s: int = Field(
        default=5, ge=1, description="The ``Retry-After`` of a 429 for a full queue or a key past its quota."
    )

    # --- API behaviour --------------------------------------------------------------------------
    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 1 << 30
    poll_interval_s: float = 0.05
    stream_keepalive_s: float = 15.0
    run_timeout_s: float = 3600.0
    shutdown_grace_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "On SIGTERM: how long in-flight sync runs and status streams may still finish; then a run "
            "answers fal's error shape with its x-fal-request-id (its result stays fetchable from the queue)."
        ),
    )
    upload_ttl_s: int = 3600

    # --- storage --------------------------------------------------------------------------------
    storage_dir: Path = Path(".run/storage")
    default_file_ttl_s: int | None = None
    file_expiry_interval_s: float = Field(
        default=60.0, gt=0, description="How often the API removes expired files and abandoned uploads."
    )
    jpeg_quality: int = 95

    # --- worker ---------------------------------------------------------------------------------
    model_path: Path | None = None
    device: str = "cpu"
    quantization: Literal["none", "fp8"] = Field(
        default="none",
        description=(
            "Weights as loaded: none, or fp8 (the LLM's and the diffusion head's linear weights in fp8 e4m3 with "
            "per-channel scales, quantised at load: about half the weight memory, so BitDance-14B fits a 24 GB GPU)."
        ),
    )
    torch_threads: int = Field(
        default=1,
        description=(
            "torch intra-op threads per worker; 0 keeps torch's default. 1 by default: OpenMP spinning "
            "made 2 threads ~50x slower than 1 on a busy 2-core machine."
        ),
    )
    worker_name: str | None = None
    max_batch_images: int = Field(
        default=1,
        ge=1,
        description=(
            "Images one worker generates together: a starting request takes queued requests of the same "
            "size and step count into its batch, up to this many images. 1 turns batching off; on GPUs, "
            "4-8 raises throughput (each request still gets exactly its own images)."
        ),
    )
    progress_interval_s: float = Field(default=0.1, description="Minimum seconds between two progress log entries.")
    safety_checker: Literal["opennsfw", "diffusers", "none"] = "opennsfw"
    safety_checker_path: Path | None = None
    nsfw_threshold: float = 0.8

    # --- simulated model (BITDANCE_MODEL_PATH=simulated: no torch, no weights) --------------------
    simulated_profile: str = Field(
        default="upstream-readme",
        description="Latency profile of the simulated model: a built-in name or a JSON file (model.simulated).",
    )
    simulated_speed: float = Field(default=1.0, gt=0, description="Speed factor: 2 makes every request twice as fast.")
    simulated_slots: int = Field(
        default=1, ge=1, description="Requests one simulated worker process serves at once (N emulated GPUs)."
    )
    simulated_failure_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Probability that a simulated generation fails (as a real one would)."
    )

    # --- webhooks -------------------------------------------------------------------------------
    webhook_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description=(
            "Deadline of one whole delivery attempt: DNS, connecting, sending and the response's status "
            "and headers (the body of a 2xx is never read, of another answer at most 2 KiB). A receiver "
            "that answers slowly, or drips bytes, is cut off at it and retried later."
        ),
    )
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 2.0
    webhook_backoff_max_s: float = 1800.0
    webhook_poll_interval_s: float = Field(default=0.2, description="How often idle dispatchers look for due webhooks.")
    webhook_concurrency: int = Field(
        default=64,
        ge=1,
        description="Delivery attempts one process (the API, each worker) makes at once.",
    )
    webhook_concurrency_per_host: int = Field(
        default=4,
        ge=1,
        description=(
            "Of those, attempts to one receiver (scheme, host and port) at once; a webhook for a receiver "
            "at its cap waits (without using an attempt) so that a slow receiver holds few of the slots."
        ),
    )
    webhook_allow_private: bool = Field(
        default=False,
        description=(
            "Deliver webhooks to loopback, private, link-local and multicast addresses too. Off: such URLs "
            "are refused at submit (422) and again at delivery (after DNS resolution), against SSRF."
        ),
    )

    # --- logging --------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_status_polls: bool = Field(
        default=False,
        description=(
            "Write an access-log line for every answered status poll too. Off: fal clients poll each request "
            "every 100-500 ms, so these lines were most of the log and a fifth of a poll's CPU; polls that fail "
            "(4xx/5xx), status streams and every other route are logged either way."
        ),
    )

    @field_validator("api_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def is_open(self) -> bool:
        """True when no API keys are configured: every caller is accepted (loopback only)."""
        return not self.api_keys

    @property
    def cors_origins(self) -> list[str]:
        """The origins CORS allows: ``cors_allow_origins`` when set, else any with keys and none without."""
        if self.cors_allow_origins is not None:
            return self.cors_allow_origins
        return ["*"] if self.api_keys else []

    @property
    def is_metrics_keyed(self) -> bool:
        """Whether ``/metrics`` asks for a key (``metrics_require_key``, else: unless bound to loopback)."""
        if self.metrics_require_key is not None:
            return self.metrics_require_key
        return not is_loopback_host(self.host)

    @property
    def queue_normal(self) -> str:
        return f"{self.key_prefix}-normal"

    @property
    def queue_low(self) -> str:
        return f"{self.key_prefix}-low"

    @property
    def worker_forget_after_s(self) -> float:
        """A worker without a heartbeat for this long (killed: it never unregisters) is removed from Redis."""
        return 3 * self.lease_ttl_s


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is loopback only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def child_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process of the stack: the parent's plus these settings as BITDANCE_*.

    Only the launcher uses this, so that API and workers started by it see the same configuration.
    """
    env = dict(os.environ)
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, list):
            env[f"BITDANCE_{name.upper()}"] = ",".join(str(v) for v in value)
        else:
            env[f"BITDANCE_{name.upper()}"] = str(value)
    env.update(extra)
    return env
