"""Issue 19, item 10: a full disk under a real server (uvicorn, Redis), on a tiny tmpfs.

Before: a plain 500 and an empty temp file left behind. Now fal's error shape with 507
(``insufficient_storage``), and nothing of the refused upload stays on disk; once space is free
again uploads work. Needs permission to mount a tmpfs (root in a container); skipped otherwise
(``tests/unit/server/test_small_hardening.py`` makes the write fail with ``ENOSPC`` instead).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.errors import InsufficientStorageError
from core.storage import LocalStorage
from stack.launcher import RedisProcess, base_url, start_api, wait_until_ready
from tests.conftest import KEY_A, HardenedApi, stack_settings

DISK_BYTES = 1 << 20
UPLOAD = 400 << 10


@pytest.fixture(scope="module")
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount_point = tmp_path_factory.mktemp("tiny-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def api_on_tiny_disk(redis_server: RedisProcess, tiny_disk: Path) -> Iterator[HardenedApi]:
    settings = stack_settings(redis_server, tiny_disk / "storage", key_prefix="diskfull")
    api = start_api(settings, None, tiny_disk.parent / "diskfull-api.log")
    url = base_url(settings)
    try:
        wait_until_ready(url, processes=(api,))
        yield HardenedApi(url, settings, api, accept_url=url)  # its own bound is the default one
    finally:
        api.stop()


def files_in(storage: Path) -> list[Path]:
    return [path for path in storage.rglob("*") if path.is_file()]


def fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on the tmpfs."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler.write_bytes(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_a_full_disk_is_a_507_and_leaves_nothing(api_on_tiny_disk: HardenedApi, tiny_disk: Path) -> None:
    storage = api_on_tiny_disk.settings.storage_dir
    filler = fill(tiny_disk, leave_bytes=100 << 10)
    with httpx.Client(base_url=api_on_tiny_disk.url, headers={"Authorization": f"Key {KEY_A}"}, timeout=30) as client:
        single = client.post("/storage/upload/initiate", json={}).json()["upload_url"]
        multi = client.post("/storage/upload/initiate-multipart", json={}).json()["upload_url"]
        for refused in (client.put(single, content=b"x" * UPLOAD), client.put(f"{multi}/1", content=b"y" * UPLOAD)):
            assert refused.status_code == 507, refused.text  # before: a plain 500
            assert refused.json()["error_type"] == "insufficient_storage"
            assert refused.headers["x-fal-error-type"] == "insufficient_storage"
        assert files_in(storage) == []  # before: an empty staged file stayed
        filler.unlink()  # space again: the same upload goes through
        stored = client.put(single, content=b"x" * UPLOAD)
        assert stored.status_code == 200 and stored.json()["size"] == UPLOAD
        assert len(httpx.get(stored.json()["file_url"]).content) == UPLOAD


def test_a_worker_storing_an_image_on_a_full_disk_leaves_nothing(tiny_disk: Path) -> None:
    storage = LocalStorage(tiny_disk / "worker-storage")
    filler = fill(tiny_disk, leave_bytes=50 << 10)
    try:
        with pytest.raises(InsufficientStorageError):
            storage.put_bytes(b"i" * UPLOAD, file_name="image.png", content_type="image/png", owner="o")
        assert files_in(storage.root) == []
    finally:
        filler.unlink()
