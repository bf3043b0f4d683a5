"""Generate images from the command line.

    python -m model.generate --model PATH --prompt "a red fox" --image-size square_hd \
        --steps 25 --guidance 7.5 --seed 42 --num-images 1 --out out.png

``--image-size`` takes one of fal's presets or ``WIDTHxHEIGHT``; the size is snapped to the nearest
size the checkpoint supports. With several images, ``out.png`` becomes ``out-0.png``, ``out-1.png``...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from model.resolutions import FAL_IMAGE_SIZE_PRESETS, resolve_image_size


def parse_image_size(text: str) -> str | dict[str, int]:
    if text in FAL_IMAGE_SIZE_PRESETS:
        return text
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(FAL_IMAGE_SIZE_PRESETS)} or WIDTHxHEIGHT, got {text!r}"
        ) from None
    return {"width": width, "height": height}


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.generate", description="BitDance text-to-image")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory (native layout)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image-size", type=parse_image_size, default="square_hd")
    parser.add_argument("--steps", type=int, default=25, help="diffusion-head sampling steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("out.png"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.errors import CheckpointError
    from model.pipeline import BitDancePipeline

    try:
        pipe = BitDancePipeline.from_pretrained(args.model, device=args.device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    height, width = resolve_image_size(args.image_size, pipe.parallel_num)
    bar = tqdm(desc=f"{width}x{height}", unit="step")

    def on_step(step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    images = pipe.generate(
        args.prompt, height, width, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, num_images=args.num_images, progress=on_step,
    )  # fmt: skip
    bar.close()
    for image, path in zip(images, output_paths(args.out, len(images)), strict=True):
        image.save(path)
        print(f"wrote {path} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
