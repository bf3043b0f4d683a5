"""``python -m tests.unit.model.version_probe OUT CHECKPOINT...``: one image per checkpoint, saved for another process.

The cross-version test (``test_transformers_versions.py``) runs this under the other transformers
the project allows (4.57 from a 5.x run, 5.x from a 4.57 run) and compares what it saved with its
own in-process result: the sampled tokens, the pixels and the RoPE frequencies, per checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

from model.pipeline import BitDancePipeline, GenerationRequest

PROMPT = "a red fox sitting in a snowy forest at sunset"
SIZE, STEPS, GUIDANCE, SEED = 512, 10, 7.5, 42


def generate(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Tokens, image and RoPE ``inv_freq`` of one guided 512x512 image from ``checkpoint`` (one thread)."""
    pipe = BitDancePipeline.from_pretrained(checkpoint)
    request = GenerationRequest(PROMPT, SEED, GUIDANCE, 1)
    output = pipe.generate_batch([request], height=SIZE, width=SIZE, num_inference_steps=STEPS, return_tokens=True)
    image = torch.from_numpy(np.asarray(output.images[0][0]).copy())
    return {"tokens": output.tokens, "image": image, "inv_freq": pipe.llm.rotary_emb.inv_freq.cpu()}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # as the tests: exact, whatever the other process does
    out, checkpoints = Path(argv[0]), [Path(a) for a in argv[1:]]
    results = {str(c): generate(c) for c in checkpoints}
    torch.save({"transformers": transformers.__version__, "results": results}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
