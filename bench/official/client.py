"""The official BitDance pipeline as a subprocess in its own environment: the client side.

``OfficialPipeline(repo)`` prepares upstream's environment if needed (:mod:`bench.official.environment`),
starts :mod:`bench.official.upstream` there on the checkout ``repo`` (an extracted
github.com/shallowdream204/BitDance), and forwards calls to it, one JSON line each way. The
benchmark and the parity tests use it, so the official side always runs with the transformers
version it was written for, whatever this project's environment has.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench.official.environment import ensure_official_env

OFFICIAL_ENV = "BITDANCE_OFFICIAL_REPO"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class OfficialError(RuntimeError):
    """The official side failed; the message is its exception."""


class OfficialPipeline:
    """A running official pipeline; ``load``/``load_random`` first, then ``generate`` and ``encode``."""

    def __init__(self, repo: str | Path, log=print):
        repo = Path(repo).absolute()
        if not (repo / "modeling" / "t2i_pipeline.py").is_file():
            raise OfficialError(f"{repo} is not a checkout of shallowdream204/BitDance (no modeling/t2i_pipeline.py)")
        python = ensure_official_env(log=log)
        environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            [str(python), "-m", "bench.official.upstream", str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the official code's prints and warnings reach our stderr
            text=True,
            env=environment,
            cwd=PROJECT_ROOT,
        )
        self._answer()  # {"ready": true} once upstream's modules are imported

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise OfficialError(f"the official runner exited (status {self.process.wait()}); see its output above")
        answer = json.loads(line)
        if "error" in answer:
            raise OfficialError(answer["error"])
        return answer

    def call(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def load(self, checkpoint: str | Path, device: str = "cpu", threads: int = 0) -> dict[str, Any]:
        """Upstream's ``BitDanceT2IPipeline(checkpoint)``; returns the weights' fingerprints."""
        return self.call("load", checkpoint=str(checkpoint), device=device, threads=threads)

    def load_random(
        self, configs: str | Path, tokenizer: str | Path, seed: int, device: str = "cpu", threads: int = 0
    ) -> dict[str, Any]:
        """Upstream's classes built from ``configs``, their weights drawn by ``model.checkpoint.random_weights``."""
        return self.call(
            "load_random", configs=str(configs), tokenizer=str(tokenizer), seed=seed, device=device, threads=threads
        )

    def generate(self, prompt: str, height: int, width: int, steps: int, guidance: float, seed: int,
                 num_images: int = 1, save: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
        """One timed ``generate``: ``{"seconds", "stages": {llm, head, decoder}, "peak_memory_bytes"}``."""
        return self.call(
            "generate",
            prompt=prompt,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            save=str(save) if save else None,
        )

    def encode(self, text: str) -> list[int]:
        return self.call("encode", text=text)["ids"]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.call_quit()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()

    def call_quit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.process.stdin.close()

    def __enter__(self) -> OfficialPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
