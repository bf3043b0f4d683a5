"""How ``stack.launcher`` spreads its workers over devices (``make run DEVICE=... WORKERS=...``)."""

from __future__ import annotations

import pytest

from stack.launcher import parse_args, worker_devices


def test_one_worker_per_gpu() -> None:
    assert worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert worker_devices("cuda:0, cuda:2", 2) == ["cuda:0", "cuda:2"]
    assert worker_devices("cuda:0,cuda:1", 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_a_single_device_is_shared() -> None:
    assert worker_devices("cpu", 2) == ["cpu", "cpu"]
    assert worker_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    assert worker_devices("cuda", 1) == ["cuda"]
    with pytest.raises(ValueError):
        worker_devices(" , ", 1)


def test_workers_default_to_the_listed_devices() -> None:
    args = parse_args(["--device", "cuda:0,cuda:1"])
    assert worker_devices(args.device, args.workers) == ["cuda:0", "cuda:1"]
    args = parse_args(["--workers", "3"])
    assert worker_devices(args.device, args.workers) == ["cpu", "cpu", "cpu"]
    assert worker_devices("cuda") == ["cuda"]
