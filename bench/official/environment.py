"""The official BitDance code's own Python environment, prepared on first use.

Upstream's ``gen_image`` needs transformers 4.57 (it indexes ``past_key_values[0][0]``, which the
``DynamicCache`` of transformers 5 no longer supports) and einops; this project runs transformers 5.
So the official pipeline runs in a separate virtual environment with upstream's pins
(``requirements.txt`` of github.com/shallowdream204/BitDance, minus what its text-to-image
pipeline does not import: gradio, omegaconf, liger-kernel, accelerate, torchvision), in a
subprocess (:mod:`bench.official.upstream`) that this project's benchmark and parity tests talk to.

torch is the one deliberate difference: the same ``torch==2.13.0`` this project installs (``make
install``'s ``TORCH_SPEC``), never an unpinned one, which would pull a multi-GB CUDA build onto CPU
machines; pip's cache or the local wheel make it quick. The environment is made once under
``.run/official-env`` (or ``BITDANCE_OFFICIAL_ENV``) and rebuilt only when these pins change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ENV_DIR_VARIABLE = "BITDANCE_OFFICIAL_ENV"
TORCH_SPEC_VARIABLE = "TORCH_SPEC"
DEFAULT_ENV_DIR = Path(".run") / "official-env"
TORCH_SPEC = "torch==2.13.0"
UPSTREAM_PINS = (
    "transformers==4.57.0",
    "einops==0.6.1",
    "numpy==1.26.4",
    "safetensors==0.6.2",
    "huggingface_hub==0.34.4",
    "tqdm",
    "pillow",
)
STAMP = "bitdance-official-env.json"


def requirements() -> list[str]:
    """What the official environment installs: upstream's pins and this project's torch pin."""
    torch_spec = os.environ.get(TORCH_SPEC_VARIABLE) or TORCH_SPEC
    if "==" not in torch_spec:
        raise ValueError(f"{TORCH_SPEC_VARIABLE} must pin torch exactly (torch==X.Y.Z), got {torch_spec!r}")
    return [torch_spec, *UPSTREAM_PINS]


def env_dir() -> Path:
    return Path(os.environ.get(ENV_DIR_VARIABLE) or DEFAULT_ENV_DIR).absolute()


def env_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def ensure_official_env(directory: Path | None = None, log=print) -> Path:
    """The official environment's python, creating or updating the environment when needed."""
    directory = directory or env_dir()
    wanted = requirements()
    stamp = directory / STAMP
    python = env_python(directory)
    if python.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return python
    log(f"preparing the official code's environment in {directory} ({', '.join(wanted)}); once, a few minutes")
    if not python.is_file():
        venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        failed = " ".join(command)
        raise RuntimeError(f"could not prepare the official environment ({failed}):\n{result.stderr[-4000:]}")
    stamp.write_text(json.dumps(wanted))
    return python


def main() -> int:
    print(ensure_official_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
