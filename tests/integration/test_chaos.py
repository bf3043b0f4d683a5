"""The chaos suite, short (``make chaos`` runs the long one): the worker, Redis and the API each crash
or restart once under load, through ``python -m stack`` as ``make run`` starts it; nothing is lost. Then
the short abuse scenarios (``stack.abuse``): every hostile connection is refused as designed, none lost; one key
flooding the queue gets 429 past its quota, and every request it had accepted ends COMPLETED."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(900)
def test_short_chaos_run_loses_no_request(tiny_checkpoint: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "stack.chaos", "--kills", "1", "--redis-restarts", "1", "--api-restarts", "1"]
    argv += ["--per-round", "1", "--settle-s", "300", "--model", str(tiny_checkpoint), "--data-dir", str(tmp_path)]
    argv += ["--abuse", "short"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=850, check=False)
    report = done.stdout + done.stderr[-4000:]
    assert done.returncode == 0, report
    rows = re.findall(
        r"^(kill -9 worker|restart redis|restart api) x1\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", done.stdout, re.M
    )
    assert [row[0] for row in rows] == ["kill -9 worker", "restart redis", "restart api"], report
    for _, submitted, ok, error, lost in rows:
        assert int(submitted) >= 1 and int(ok) + int(error) == int(submitted) and int(lost) == 0, report
    assert "workers listed in Redis at the end (after 1 kills): 1" in done.stdout, report
    abuse = re.findall(
        r"^(big-headers|slowloris|pipelining|connection-flood|key-flood)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s",
        done.stdout,
        re.M,
    )
    assert [row[0] for row in abuse] == ["big-headers", "slowloris", "pipelining", "connection-flood", "key-flood"], (
        report
    )
    for scenario, _, sent, refused, served, errors, lost in abuse:
        assert int(sent) > 0 and int(refused) > 0 and int(errors) == 0 and int(lost) == 0, (scenario, report)
        assert int(refused) + int(served) == int(sent), (scenario, report)
