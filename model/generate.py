"""Generate images from the command line: ``bitdance-generate`` (or ``python -m model.generate``).

    bitdance-generate --model weights/BitDance-14B-64x --device cuda:0 --prompt "a red fox" \\
        --image-size square_hd --num-inference-steps 25 --guidance-scale 7.5 --seed 42 --out fox.jpg

Every input of the ``fal-ai/bitdance`` endpoint is a flag with the endpoint's name, default and
bounds (checked by the endpoint's own schema): ``--prompt``, ``--image-size`` (a preset or
``WIDTHxHEIGHT``, snapped to the nearest size the checkpoint serves), ``--num-inference-steps``,
``--guidance-scale``, ``--seed``, ``--num-images``, ``--enable-safety-checker`` /
``--no-enable-safety-checker`` (the worker's checker), ``--output-format`` and ``--sync-mode``
(print data URIs instead of writing files). It writes the images and prints one path per line.

Threads: ``--threads`` (default ``BITDANCE_TORCH_THREADS``, else 1, as the workers), so the CLI runs
exactly as fast as a worker on the same input; 0 keeps torch's default. The CLI reads the workers'
settings (``core.settings.Settings``: the threads, ``BITDANCE_JPEG_QUALITY``) and validates its inputs
with the endpoint's schema; screening and encoding are the library's (``model.safety``,
``model.encoding``), as in the worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.schemas import BitDanceInput  # torch-free: the same bounds and defaults as the API
from core.settings import Settings
from model.encoding import data_uri, encode_image
from model.resolutions import FAL_IMAGE_SIZE_PRESETS, resolve_image_size
from model.safety import OpenNsfwChecker, redact
from model.seeds import resolve_seed

THREADS_VARIABLE = "BITDANCE_TORCH_THREADS"


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


def worker_settings() -> Settings:
    """The settings a worker would run with here (``BITDANCE_*`` variables, ``.env``); a bad value exits with 2."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"BITDANCE_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def default_threads() -> int:
    """``BITDANCE_TORCH_THREADS`` as the workers read it (their settings), else 1."""
    return worker_settings().torch_threads


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitdance-generate",
        description="BitDance text-to-image: the fal-ai/bitdance endpoint's inputs as flags; writes the images.",
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory (native layout)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--quantization",
        choices=("none", "fp8"),
        default=None,
        help="fp8: the LLM's and the head's linear weights in fp8 (default: $BITDANCE_QUANTIZATION, else none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default: ${THREADS_VARIABLE}, else 1, as the workers; 0: torch's default)",
    )
    endpoint = parser.add_argument_group("endpoint inputs (fal-ai/bitdance)")
    endpoint.add_argument("--prompt", required=True)
    endpoint.add_argument(
        "--image-size", type=parse_image_size, default="square_hd", help="a preset or WIDTHxHEIGHT (default square_hd)"
    )
    endpoint.add_argument(
        "--num-inference-steps",
        "--steps",
        dest="num_inference_steps",
        type=int,
        default=25,
        help="sampling steps of the diffusion head for each patch (10-100, default 25)",
    )
    endpoint.add_argument(
        "--guidance-scale", "--guidance", dest="guidance_scale", type=float, default=7.5, help="CFG (1-15)"
    )
    endpoint.add_argument("--seed", type=int, default=None, help="random when omitted")
    endpoint.add_argument("--num-images", type=int, default=1, help="1-4")
    endpoint.add_argument(
        "--enable-safety-checker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="black out images the worker's safety checker flags (default: on)",
    )
    endpoint.add_argument("--output-format", choices=("jpeg", "png"), default=None, help="default: from --out")
    endpoint.add_argument("--sync-mode", action="store_true", help="print data URIs instead of writing files")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: out.jpg / out.png)")
    return parser


def endpoint_input(args: argparse.Namespace) -> dict[str, Any]:
    """The request as the endpoint would receive it, validated by the endpoint's schema."""
    output_format = args.output_format or ("png" if args.out and args.out.suffix.lower() == ".png" else "jpeg")
    values = {
        "prompt": args.prompt,
        "image_size": args.image_size,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "num_images": args.num_images,
        "enable_safety_checker": args.enable_safety_checker,
        "output_format": output_format,
        "sync_mode": args.sync_mode,
    }
    try:
        return BitDanceInput.model_validate(values).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: {problems}") from None


class PatchProgress:
    """A progress bar over patches: ``patch 12/64, 25 sampling steps each``."""

    def __init__(self, sampling_steps: int, label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=label, unit="patch", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{sampling_steps} sampling steps each")

    def __call__(self, patch: int, num_patches: int) -> None:
        self.bar.total = num_patches
        self.bar.update(patch - self.bar.n)
        if patch == num_patches:
            self.bar.set_postfix_str("decoding to pixels")

    def close(self) -> None:
        self.bar.close()


def screen(images: Sequence[Any]) -> tuple[list[Any], list[bool]]:
    """The worker's default safety checker and redaction, as the endpoint applies them."""
    flags = OpenNsfwChecker().check(images)
    return redact(images, flags), flags


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = endpoint_input(args)
    settings = worker_settings()
    threads = settings.torch_threads if args.threads is None else args.threads
    quantization = settings.quantization if args.quantization is None else args.quantization
    import torch

    from model.exceptions import CheckpointError
    from model.pipeline import BitDancePipeline

    if threads:
        torch.set_num_threads(threads)
    try:
        pipe = BitDancePipeline.from_pretrained(args.model, device=args.device, quantization=quantization)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if pipe.identity.random:
        print(f"note: {pipe.identity.summary()}", file=sys.stderr)
    try:
        height, width = resolve_image_size(request["image_size"], pipe.parallel_num)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed = resolve_seed(request["seed"])  # the worker's seed policy
    progress = PatchProgress(request["num_inference_steps"], f"{width}x{height}")
    started = time.perf_counter()
    images = pipe.generate(
        request["prompt"], height, width, num_inference_steps=request["num_inference_steps"],
        guidance_scale=request["guidance_scale"], seed=seed, num_images=request["num_images"],
        progress=progress,
    )  # fmt: skip
    generate_s = time.perf_counter() - started
    progress.close()
    flags = [False] * len(images)
    if request["enable_safety_checker"]:
        images, flags = screen(images)
    output_format = request["output_format"]
    out = args.out or Path(f"out.{'png' if output_format == 'png' else 'jpg'}")
    for image, path, flagged in zip(images, output_paths(out, len(images)), flags, strict=True):
        encoded = encode_image(image, output_format, settings.jpeg_quality)
        if request["sync_mode"]:
            print(data_uri(encoded))
            continue
        path.write_bytes(encoded.data)
        print(path)
        print(
            f"  {image.width}x{image.height} {output_format}{', NSFW: blacked out' if flagged else ''}", file=sys.stderr
        )
    threads_used = threads or torch.get_num_threads()
    print(
        f"seed {seed}, generated in {generate_s:.2f}s on {args.device} ({threads_used} torch threads)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
