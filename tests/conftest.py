"""Shared fixtures: a private redis-server, the tiny checkpoint, and the live stack (API + worker).

Everything is started with the same code as ``make run`` (``stack.launcher``) on free ports, once per
session, and torn down at the end. Logs of the children land in the session's tmp directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.settings import Settings
from stack.launcher import (
    ManagedProcess,
    RedisProcess,
    base_url,
    ensure_tiny_checkpoint,
    free_port,
    start_api,
    start_worker,
    wait_until_ready,
)
from stack.tls import TlsFiles, ensure_tls_files

KEY_A = "test-key-a"
KEY_B = "kid-b:secret-b"
TINY_PARALLEL = 16


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server on a free port (AOF on), for the whole session."""
    root = tmp_path_factory.mktemp("redis")
    server = RedisProcess(root / "data", log_path=root / "redis.log").start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(redis_server: RedisProcess, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the session Redis with a key prefix of their own (fresh state per test)."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "storage_dir": tmp_path / "storage",
            "key_prefix": f"t{uuid.uuid4().hex[:10]}",
            "api_keys": [KEY_A, KEY_B],
            "webhook_allow_private": True,  # the tests' webhook receivers listen on 127.0.0.1
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random 16x checkpoint (supports 512x512), written once per session."""
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-16x", TINY_PARALLEL)


@dataclass
class LiveStack:
    """The running API + worker(s) on the session Redis."""

    settings: Settings
    url: str
    model_path: Path
    log_dir: Path
    redis_server: RedisProcess
    api: ManagedProcess
    workers: list[ManagedProcess] = field(default_factory=list)

    def client(self, key: str | None = KEY_A, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Key {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def start_worker(self) -> ManagedProcess:
        index = len(self.workers)
        worker = start_worker(
            self.settings,
            self.model_path,
            "cpu",
            f"test-worker-{index}",
            self.log_dir / f"worker-{index}.log",
        )
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[ManagedProcess]:
        return [w for w in self.workers if w.is_running()]

    def wait_ready(self, min_workers: int = 1, timeout_s: float = 120.0) -> None:
        wait_until_ready(self.url, min_workers=min_workers, timeout_s=timeout_s, processes=(self.api,))


def stack_settings(redis_server: RedisProcess, storage: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "redis_url": redis_server.url,
        "storage_dir": storage,
        "api_keys": [KEY_A, KEY_B],
        "lease_ttl_s": 3.0,
        "sweep_interval_s": 1.0,
        "webhook_backoff_s": 0.2,
        "webhook_max_attempts": 5,
        "poll_interval_s": 0.02,
        "progress_interval_s": 0.0,
        "torch_threads": 1,  # OpenMP spinning makes 2 threads far slower on a busy 2-core machine
        "webhook_allow_private": True,  # the tests' webhook receivers listen on 127.0.0.1
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def live_stack(
    redis_server: RedisProcess, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    """API (HTTP) + one worker on the tiny 16x checkpoint; shared by the integration tests."""
    log_dir = tmp_path_factory.mktemp("stack-logs")
    settings = stack_settings(redis_server, tmp_path_factory.mktemp("storage"))
    api = start_api(settings, None, log_dir / "api.log")
    stack = LiveStack(settings, base_url(settings), tiny_checkpoint, log_dir, redis_server, api)
    stack.start_worker()
    try:
        stack.wait_ready(min_workers=1)
        yield stack
    finally:
        for process in [*stack.workers, api]:
            process.stop()


@dataclass
class HardenedApi:
    """An API process with the production defaults that matter for hostile input (see the fixture)."""

    url: str
    settings: Settings
    api: ManagedProcess
    accept_url: str  # a second API on the same prefix and storage whose queue has no bound: submits are stored

    def client(self, key: str | None = KEY_A, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Key {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


HARDENED_MAX_UPLOAD_BYTES = 1 << 20


@pytest.fixture(scope="session")
def hardened_api(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedApi]:
    """A real uvicorn API on the session Redis for hostile-input tests, with no worker behind it.

    Its own key prefix (no worker serves its queue), default webhook policy (private addresses
    refused), a 1 MiB upload cap, and a queue limit of 0: an input that passes validation is
    answered 429, so fuzzing never feeds the session's real worker. A client cannot raise that limit
    (``fal_max_queue_length`` only lowers it): inputs meant to be stored go to ``accept_url``, a
    second API on the same prefix and storage with no queue bound.
    """
    root = tmp_path_factory.mktemp("hardened")
    settings = stack_settings(
        redis_server,
        root / "storage",
        key_prefix="hardened",
        webhook_allow_private=False,
        max_queue_length=0,
        max_upload_bytes=HARDENED_MAX_UPLOAD_BYTES,
    )
    api = start_api(settings, None, root / "api.log")
    url = base_url(settings)
    accepting = settings.model_copy(update={"port": free_port(), "max_queue_length": None})
    accept_api = start_api(accepting, None, root / "api-accepting.log")
    try:
        wait_until_ready(url, processes=(api,))
        wait_until_ready(base_url(accepting), processes=(accept_api,))
        yield HardenedApi(url, settings, api, base_url(accepting))
    finally:
        accept_api.stop()
        api.stop()


@dataclass
class TlsApi:
    url: str
    ca_file: Path
    tls: TlsFiles
    settings: Settings


@pytest.fixture(scope="session")
def tls_api_server(live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsApi]:
    """A second API process serving HTTPS (local CA) on the same Redis and workers as ``live_stack``.

    Clients trust it with ``SSL_CERT_FILE=<ca_file>`` (the certificate covers 127.0.0.1 and localhost).
    """
    tls = ensure_tls_files(tmp_path_factory.mktemp("tls"))
    settings = live_stack.settings.model_copy(update={"port": free_port()})
    api = start_api(settings, tls, live_stack.log_dir / "api-tls.log")
    url = base_url(settings, tls)
    try:
        wait_until_ready(url, min_workers=1, ca_file=tls.ca, processes=(api,))
        yield TlsApi(url, tls.ca, tls, settings)
    finally:
        api.stop()
