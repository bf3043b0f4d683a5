"""The official pipeline in its own environment, driven over stdin/stdout: the subprocess side.

Started by :class:`bench.official.client.OfficialPipeline` with the python of :mod:`bench.official.environment`
(transformers 4.57, einops, upstream's pins) as ``python -m bench.official.upstream REPO``; it imports
only torch, the standard library, :mod:`model.checkpoint.random_weights` and the official checkout's code.
Each request is one JSON line on stdin, each answer one JSON line on stdout (everything the
official code prints goes to stderr):

* ``{"cmd": "load", "checkpoint": DIR, "device": D, "threads": N}``: ``BitDanceT2IPipeline(DIR)``;
  on the CPU its LLM is loaded in float32 (upstream asks for bfloat16), as ours is.
* ``{"cmd": "load_random", "configs": DIR, "tokenizer": DIR, "seed": S, "device": D, "threads": N}``:
  the same classes built from config files, their weights drawn by :func:`fill_random_` (no files).
* ``{"cmd": "generate", "prompt", "height", "width", "steps", "guidance", "num_images", "seed",
  "save": PATH or null}``: one timed ``generate`` call; answers seconds, per-stage seconds and the
  peak CUDA memory; with ``save``, writes the sampled tokens and the images there (``torch.save``).
* ``{"cmd": "encode", "text": T}``: the tokenizer's ids. ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.checkpoint.random_weights import fill_random_, fingerprint


def sdpa_flash_attn() -> types.ModuleType:
    """A ``flash_attn`` module whose ``flash_attn_func`` runs PyTorch SDPA, for machines without it."""
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale
        )
        return out.transpose(1, 2)

    setattr(module, "flash_attn_func", flash_attn_func)  # noqa: B010 - a module built at run time
    return module


def import_official(repo: Path) -> Any:
    """``modeling.t2i_pipeline`` of the checkout, with an SDPA stand-in for a missing flash-attn."""
    if not (repo / "modeling" / "t2i_pipeline.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of shallowdream204/BitDance (no modeling/t2i_pipeline.py)")
    if "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is None:
        sys.modules["flash_attn"] = sdpa_flash_attn()
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return importlib.import_module("modeling.t2i_pipeline")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    def __init__(self, repo: Path):
        self.official = import_official(repo)
        self.pipe: Any = None
        self.device = torch.device("cpu")
        self.stages: dict[str, float] = {}

    # -- loading ------------------------------------------------------------------------------

    def _setup(self, request: dict) -> None:
        self.device = torch.device(request.get("device", "cpu"))
        if request.get("threads"):
            torch.set_num_threads(int(request["threads"]))

    def load(self, request: dict) -> dict:
        """Upstream's own constructor on a checkpoint directory (float32 LLM on the CPU)."""
        self._setup(request)
        official = self.official
        upstream = official.Qwen3ForCausalLM

        class Float32Qwen3(upstream):  # type: ignore[valid-type,misc]
            @classmethod
            def from_pretrained(cls, *args, **kwargs):
                kwargs.pop("torch_dtype", None)
                return upstream.from_pretrained(*args, **kwargs, torch_dtype=torch.float32)

        if self.device.type == "cpu":
            official.Qwen3ForCausalLM = Float32Qwen3
        try:
            self.pipe = official.BitDanceT2IPipeline(request["checkpoint"], device=str(self.device))
        finally:
            official.Qwen3ForCausalLM = upstream
        return self._loaded()

    def load_random(self, request: dict) -> dict:
        """``BitDanceT2IPipeline.__init__`` step by step, from config files, with seeded random weights."""
        self._setup(request)
        official, configs, seed = self.official, Path(request["configs"]), int(request["seed"])
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        pipe = official.BitDanceT2IPipeline.__new__(official.BitDanceT2IPipeline)
        pipe.device = str(self.device)
        pipe.tokenizer = official.AutoTokenizer.from_pretrained(request["tokenizer"])
        pipe.llm_config = official.Qwen3Config.from_pretrained(str(configs), attn_implementation="sdpa")
        pipe.hidden_size = pipe.llm_config.hidden_size
        pipe.ae_config = json.loads((configs / "ae_config.json").read_text())
        pipe.vision_head_config = json.loads((configs / "vision_head_config.json").read_text())
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(self.device):
                pipe.llm_model = official.Qwen3ForCausalLM(pipe.llm_config).eval()
                pipe.ae = official.VQModel(**pipe.ae_config).eval()
                pipe.vision_head = official.DiffHead(**pipe.vision_head_config).eval()
                z_channels = pipe.ae_config["ddconfig"]["z_channels"]
                pipe.embed_vision_mlp = official.MLPconnector(z_channels, pipe.hidden_size, "gelu_pytorch_tanh")
        finally:
            torch.set_default_dtype(default_dtype)
        fill_random_(pipe.llm_model, seed)
        fill_random_(pipe.ae, seed)
        fill_random_(pipe.vision_head, seed)
        fill_random_(pipe.embed_vision_mlp, seed)
        pipe.vae_patch_size = 2 ** (len(pipe.ae_config["ddconfig"]["ch_mult"]) - 1)
        pipe.parallel_num = pipe.vision_head_config["parallel_num"]
        pipe.ps = int(pipe.parallel_num**0.5)
        pipe.build_pos_embed()
        self.pipe = pipe
        return self._loaded()

    def _loaded(self) -> dict:
        pipe = self.pipe
        self._wrap(pipe.vision_head, "sample", "head")
        self._wrap(pipe.ae, "decode", "decoder")
        return {
            "fingerprints": {
                "llm": fingerprint(pipe.llm_model.model),
                "head": fingerprint(pipe.vision_head),
                "decoder": fingerprint(pipe.ae.decoder),
                "projector": fingerprint(pipe.embed_vision_mlp),
            }
        }

    def _wrap(self, owner: object, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            _sync(self.device)
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            _sync(self.device)
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - started
            return out

        setattr(owner, name, wrapper)

    # -- generation ---------------------------------------------------------------------------

    def generate(self, request: dict) -> dict:
        pipe, seen = self.pipe, {}
        decode_image = pipe.decode_image

        def recording_decode(latents, image_size=None, ps=1):
            seen["tokens"] = latents.detach().to("cpu", copy=True)
            return decode_image(latents, image_size, ps)

        pipe.decode_image = recording_decode
        self.stages = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            _sync(self.device)
            started = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # the official progress bar
                images = pipe.generate(
                    request["prompt"],
                    request["height"],
                    request["width"],
                    request["steps"],
                    request["guidance"],
                    num_images=request.get("num_images", 1),
                    seed=request["seed"],
                )
            _sync(self.device)
            seconds = time.perf_counter() - started
        finally:
            pipe.decode_image = decode_image
        if request.get("save"):
            import numpy as np

            pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
            torch.save({"tokens": seen["tokens"], "images": pixels}, request["save"])
        stages = {"llm": seconds - sum(self.stages.values()), **self.stages}
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"seconds": seconds, "stages": stages, "peak_memory_bytes": peak}

    def encode(self, request: dict) -> dict:
        return {"ids": self.pipe.tokenizer.encode(request["text"])}


def load_official(repo: Path, checkpoint: Path, device: torch.device) -> Any:
    """Upstream's pipeline on ``checkpoint`` in this process (needs transformers 4.57 and einops here)."""
    runner = Runner(repo)
    runner.load({"checkpoint": str(checkpoint), "device": str(device)})
    return runner.pipe


def serve(repo: Path, requests: io.TextIOBase, answers: io.TextIOBase) -> None:
    runner = Runner(repo)
    handlers = {
        "load": runner.load,
        "load_random": runner.load_random,
        "generate": runner.generate,
        "encode": runner.encode,
    }
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                answer = handlers[request["cmd"]](request)
        except Exception as exc:  # reported to the caller, which raises it there
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    answers = sys.stdout
    sys.stdout = sys.stderr  # the official code prints; the protocol owns stdout
    with contextlib.suppress(BrokenPipeError):
        serve(Path(sys.argv[1]), sys.stdin, answers)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
