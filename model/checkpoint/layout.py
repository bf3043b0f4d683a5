"""Where a BitDance checkpoint keeps its configs and weights, in either published layout (torch-free).

The same tensors, under the same names, are published in two folder layouts:

- **native** (``shallowdream204/BitDance-14B-64x`` / ``-16x``), one flat folder: ``config.json`` +
  ``generation_config.json`` + ``model.safetensors`` (Qwen3) and the tokenizer files, ``ae_config.json``
  + ``ae.safetensors``, ``vision_head_config.json`` + ``vision_head.safetensors``, ``projector.safetensors``;
- **diffusers** (``BiliSakura/BitDance-14B-64x-diffusers`` / ``-16x-diffusers``), as that port's
  ``save_pretrained`` writes it: ``model_index.json`` and one folder per component, ``text_encoder/``
  (Qwen3 ``config.json``, ``generation_config.json``, ``model.safetensors``), ``tokenizer/``, and
  ``autoencoder/``, ``diffusion_head/``, ``projector/`` each with a ``config.json`` and
  ``diffusion_pytorch_model.safetensors``.

Any weight file may instead be sharded as ``<stem>-0000i-of-0000n.safetensors`` listed by
``<stem>.safetensors.index.json``. The layout is told from the folder itself (``model_index.json``
means diffusers, ``vision_head_config.json`` native). Nothing here reads a tensor or a config:
:func:`locate_checkpoint` says where the files are (``model.checkpoint.configs`` reads them,
``model.checkpoint.tiny_checkpoint`` writes them there); :func:`identify_checkpoint` names a checkpoint
as the worker reports it (the tiny one marks its folder with :data:`TINY_MARKER`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from model.exceptions import CheckpointError
from model.interface import ModelIdentity

# The four weight-bearing parts, by the names used everywhere in this project.
COMPONENTS = ("llm", "autoencoder", "head", "projector")
MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "BitDanceDiffusionPipeline"


@dataclass(frozen=True)
class DiffusersComponent:
    """One component in the diffusers layout: its sub-folder and its ``model_index.json`` entry."""

    folder: str
    library: str  # as the port's save_pretrained records it
    class_name: str


DIFFUSERS_COMPONENTS = {
    "llm": DiffusersComponent("text_encoder", "transformers", "Qwen3ForCausalLM"),
    "autoencoder": DiffusersComponent("autoencoder", "bitdance_diffusers.modeling_autoencoder", "BitDanceAutoencoder"),
    "head": DiffusersComponent("diffusion_head", "bitdance_diffusers.modeling_diffusion_head", "BitDanceDiffusionHead"),
    "projector": DiffusersComponent("projector", "bitdance_diffusers.modeling_projector", "BitDanceProjector"),
}
TOKENIZER_FOLDER = "tokenizer"
TOKENIZER_CLASS = "Qwen2TokenizerFast"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Files the loader reads besides configs and weights, and files a published checkpoint also has.
TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer_config.json")
TOKENIZER_ALSO = ("special_tokens_map.json", "vocab.json", "merges.txt")
GENERATION_CONFIG = "generation_config.json"  # beside the LLM's config.json
# Written by ``python -m model.tiny`` next to the weights: this checkpoint's weights are random.
TINY_MARKER = "bitdance_tiny.json"
# Qwen3-14B, the LLM of the released BitDance-14B checkpoints.
HIDDEN_SIZE_14B, LAYERS_14B = 5120, 40


class Layout(StrEnum):
    NATIVE = "native"
    DIFFUSERS = "diffusers"


@dataclass(frozen=True)
class WeightFiles:
    """One component's safetensors: ``path`` itself, or the shards its ``<path>.index.json`` lists."""

    root: Path
    path: Path

    @property
    def index(self) -> Path:
        return self.path.with_name(self.path.name + ".index.json")

    @property
    def sharded(self) -> bool:
        return not self.path.is_file() and self.index.is_file()

    def exists(self) -> bool:
        return self.path.is_file() or self.index.is_file()

    def label(self) -> str:
        """The file a message about these weights names: the index when sharded, else the file."""
        return self.relative(self.index if self.sharded else self.path)

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def weight_map(self) -> dict[str, Path]:
        """Tensor name -> the file holding it, as the index says (sharded only)."""
        raw = read_json(self.root, self.relative(self.index))
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{self.label()}: no weight_map of tensor name -> file name")
        return {key: self.index.parent / shard for key, shard in weight_map.items()}

    def files(self) -> list[Path]:
        """Every safetensors file of this component; a missing file or shard is an error naming it."""
        if self.path.is_file():
            return [self.path]
        if not self.index.is_file():
            raise CheckpointError(f"{self.relative(self.path)}: missing (nor is there {self.index.name} with shards)")
        shards = sorted(set(self.weight_map().values()))
        missing = [shard for shard in shards if not shard.is_file()]
        if missing:
            listed = ", ".join(self.relative(s) for s in missing)
            raise CheckpointError(f"{self.label()}: missing shard(s) {listed}")
        return shards


@dataclass(frozen=True)
class ComponentFiles:
    """One part of the model: its config file (``None``: derived from the others) and its weights."""

    name: str
    config: Path | None
    weights: WeightFiles


@dataclass(frozen=True)
class CheckpointFiles:
    """Where every file of a checkpoint is, in either layout."""

    root: Path
    layout: Layout
    tokenizer_dir: Path
    llm: ComponentFiles
    autoencoder: ComponentFiles
    head: ComponentFiles
    projector: ComponentFiles
    model_index: Path | None = None

    def components(self) -> tuple[ComponentFiles, ...]:
        """Every component's files, in :data:`COMPONENTS` order."""
        return tuple(getattr(self, name) for name in COMPONENTS)

    def relative(self, path: Path) -> str:
        return self.llm.weights.relative(path)


def locate_checkpoint(path: str | Path) -> CheckpointFiles:
    """Tell the layout from the folder and return where its files are (they need not all exist yet)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if (root / MODEL_INDEX).is_file():
        return layout_files(root, Layout.DIFFUSERS)
    if (root / "vision_head_config.json").is_file() or (root / "ae_config.json").is_file():
        return layout_files(root, Layout.NATIVE)
    raise CheckpointError(
        f"{root} is not a BitDance checkpoint: it has neither {MODEL_INDEX} (diffusers layout) "
        "nor vision_head_config.json (native layout)"
    )


def layout_files(root: Path, layout: Layout) -> CheckpointFiles:
    """Where the files of a checkpoint in ``layout`` at ``root`` are (where the writers put them)."""
    return _native_files(root) if layout is Layout.NATIVE else _diffusers_files(root)


def _native_files(root: Path) -> CheckpointFiles:
    def weights(name: str) -> WeightFiles:
        return WeightFiles(root, root / name)

    return CheckpointFiles(
        root=root,
        layout=Layout.NATIVE,
        tokenizer_dir=root,
        llm=ComponentFiles("llm", root / "config.json", weights("model.safetensors")),
        autoencoder=ComponentFiles("autoencoder", root / "ae_config.json", weights("ae.safetensors")),
        head=ComponentFiles("head", root / "vision_head_config.json", weights("vision_head.safetensors")),
        projector=ComponentFiles("projector", None, weights("projector.safetensors")),
    )


def _diffusers_files(root: Path) -> CheckpointFiles:
    def component(name: str) -> ComponentFiles:
        folder = root / DIFFUSERS_COMPONENTS[name].folder
        weights = "model.safetensors" if name == "llm" else DIFFUSERS_WEIGHTS
        return ComponentFiles(name, folder / "config.json", WeightFiles(root, folder / weights))

    return CheckpointFiles(
        root=root,
        layout=Layout.DIFFUSERS,
        tokenizer_dir=root / TOKENIZER_FOLDER,
        llm=component("llm"),
        autoencoder=component("autoencoder"),
        head=component("head"),
        projector=component("projector"),
        model_index=root / MODEL_INDEX,
    )


def read_json(root: Path, name: str) -> Any:
    """``root/name`` parsed; a missing or malformed file is an error naming it."""
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"{name}: missing from {root}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{name}: not valid JSON ({exc})") from exc


def is_random_tiny(path: str | Path) -> bool:
    """True when ``path`` holds a checkpoint written by ``python -m model.tiny``."""
    marker = Path(path) / TINY_MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("random", True))
    except (OSError, ValueError):
        return True


def identify_checkpoint(path: str | Path, parallel_num: int, hidden_size: int, num_layers: int) -> ModelIdentity:
    """The identity of the checkpoint at ``path`` (its LLM size tells the released 14B apart)."""
    random = is_random_tiny(path)
    if random:
        size = "tiny"
    elif (hidden_size, num_layers) == (HIDDEN_SIZE_14B, LAYERS_14B):
        size = "14B"
    else:
        size = "custom"
    resolved = Path(path).resolve()
    return ModelIdentity(resolved.name, str(resolved), f"{size}-{parallel_num}x", parallel_num, random=random)
