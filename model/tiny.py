"""Write a tiny random BitDance checkpoint: ``python -m model.tiny OUT_DIR [--layout native|diffusers]``.

The checkpoint itself (seeded random weights, a trained BPE tokenizer with the BitDance special
tokens, shapes small enough for a CPU) is :mod:`model.checkpoint.tiny_checkpoint`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint.tiny_checkpoint import LAYOUTS, write_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--parallel-num", type=int, choices=(16, 64), default=64, help="tokens per step")
    parser.add_argument("--hidden", type=int, default=64, help="LLM hidden size")
    parser.add_argument("--layers", type=int, default=2, help="LLM layers")
    parser.add_argument("--head-channels", type=int, default=128, help="diffusion head width (multiple of 128)")
    parser.add_argument("--head-depth", type=int, default=2, help="diffusion head blocks")
    parser.add_argument("--layout", choices=LAYOUTS, default="native", help="folder layout (default: native)")
    parser.add_argument("--shards", type=int, default=1, help="split the weights over this many files + index")
    args = parser.parse_args(argv)
    path = write_checkpoint(args.out_dir, args.parallel_num, args.hidden, args.layers, args.head_channels,
                            args.head_depth, layout=args.layout, shards=args.shards)  # fmt: skip
    print(f"wrote a tiny {args.parallel_num}x BitDance checkpoint ({args.layout} layout) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
