"""The worker checks its checkpoint before loading: it refuses a broken one with verify's lines, and
loads either layout (here the diffusers one, sharded, named by ``BITDANCE_MODEL_PATH``), logging the
bytes it loaded and the time it took, having read the checkpoint's configs once for all of it; with
``BITDANCE_QUANTIZATION=fp8`` it plans and loads fp8 weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from model.checkpoint.tiny_checkpoint import write_checkpoint
from model.checkpoint.verification import verify_checkpoint
from stack.launcher import RedisProcess

# ``python -m worker`` that also counts how often the checkpoint's configs are parsed (the spy calls through).
COUNTING_WORKER = """
import sys
import model.checkpoint.configs as configs
reads = []
read_head_config = configs._read_head_config
configs._read_head_config = lambda files: reads.append(files.root) or read_head_config(files)
from worker.__main__ import main
code = main(sys.argv[1:])
print(f"checkpoint configs read {len(reads)} time(s)", file=sys.stderr)
sys.exit(code)
"""


def run_worker(redis_server: RedisProcess, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "BITDANCE_KEY_PREFIX": f"w{uuid.uuid4().hex[:10]}",  # queues of its own: takes no other test's jobs
        "BITDANCE_SAFETY_CHECKER": "none",
        "BITDANCE_STORAGE_DIR": str(tmp_path / "storage"),
        **env,
    }
    command = [sys.executable, "-c", COUNTING_WORKER, "--redis-url", redis_server.url, "--burst", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def test_worker_refuses_a_broken_checkpoint(redis_server: RedisProcess, tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    ae = broken / "ae.safetensors"
    ae.write_bytes(ae.read_bytes()[:-100])
    config = json.loads((broken / "vision_head_config.json").read_text())
    (broken / "vision_head_config.json").write_text(json.dumps({**config, "ch_cond": 8}))
    problems = verify_checkpoint(broken).problems
    assert len(problems) == 1 and problems[0].startswith("vision_head_config.json: ch_cond 8")
    (broken / "vision_head_config.json").write_text(json.dumps(config))
    problems = verify_checkpoint(broken).problems
    assert len(problems) == 1 and problems[0].startswith("ae.safetensors: truncated")

    result = run_worker(redis_server, tmp_path, "--model", str(broken))
    assert result.returncode == 3, result.stderr
    for problem in problems:
        assert f"ERROR worker: {problem}\n" in result.stderr
    assert "refusing to start: 1 problem(s)" in result.stderr
    assert "loaded" not in result.stderr and "ready" not in result.stderr


def test_worker_loads_a_sharded_diffusers_checkpoint(redis_server: RedisProcess, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "tiny-diffusers", parallel_num=16, layout="diffusers", shards=2)
    result = run_worker(redis_server, tmp_path, BITDANCE_MODEL_PATH=str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "(diffusers layout)" in result.stderr
    assert " GB of weights in " in result.stderr
    (ready,) = [line for line in result.stderr.splitlines() if "INFO worker: worker " in line and " ready: " in line]
    assert "16x" in ready and str(checkpoint) in ready  # the variant and the folder it loaded
    assert "checkpoint configs read 1 time(s)" in result.stderr  # verified, planned and loaded from one read


def test_worker_serves_with_fp8_weights(redis_server: RedisProcess, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_worker(
        redis_server, tmp_path, "--model", str(tiny_checkpoint), BITDANCE_QUANTIZATION="fp8", BITDANCE_LOG_LEVEL="INFO"
    )
    assert result.returncode == 0, result.stderr
    assert "on cpu, fp8 weights" in result.stderr and " GB of weights in " in result.stderr
    assert "checkpoint configs read 1 time(s)" in result.stderr
