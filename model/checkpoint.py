"""Where a BitDance checkpoint keeps its configs and weights, in either published layout, and its configs.

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
means diffusers, ``vision_head_config.json`` native). Nothing here reads a tensor: :func:`locate_checkpoint`
and :func:`read_configs` need only the config files, so a folder of configs without weights works too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from transformers import Qwen3Config

from model.autoencoder import AutoencoderConfig
from model.errors import CheckpointError
from model.head import HeadConfig

__all__ = [
    "COMPONENTS",
    "CheckpointConfigs",
    "CheckpointFiles",
    "ComponentFiles",
    "Layout",
    "ProjectorConfig",
    "WeightFiles",
    "locate_checkpoint",
    "read_configs",
    "read_json",
]

# The four weight-bearing parts, by the names used everywhere in this project.
COMPONENTS = ("llm", "autoencoder", "head", "projector")
MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "BitDanceDiffusionPipeline"
# model_index.json: component -> (sub-folder, class name as the port records it)
DIFFUSERS_FOLDERS = {
    "llm": ("text_encoder", "Qwen3ForCausalLM"),
    "autoencoder": ("autoencoder", "BitDanceAutoencoder"),
    "head": ("diffusion_head", "BitDanceDiffusionHead"),
    "projector": ("projector", "BitDanceProjector"),
}
TOKENIZER_FOLDER = "tokenizer"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PROJECTOR_ACTIVATION = "gelu_pytorch_tanh"


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
        return (self.llm, self.autoencoder, self.head, self.projector)

    def relative(self, path: Path) -> str:
        return self.llm.weights.relative(path)


def locate_checkpoint(path: str | Path) -> CheckpointFiles:
    """Tell the layout from the folder and return where its files are (they need not all exist yet)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if (root / MODEL_INDEX).is_file():
        return _diffusers_files(root)
    if (root / "vision_head_config.json").is_file() or (root / "ae_config.json").is_file():
        return _native_files(root)
    raise CheckpointError(
        f"{root} is not a BitDance checkpoint: it has neither {MODEL_INDEX} (diffusers layout) "
        "nor vision_head_config.json (native layout)"
    )


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
        folder = root / DIFFUSERS_FOLDERS[name][0]
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


@dataclass(frozen=True)
class ProjectorConfig:
    """The token projector: ``fc2(gelu_tanh(fc1(x)))``, ``in_dim`` token bits to ``out_dim`` hidden."""

    in_dim: int
    out_dim: int
    hidden_act: str = PROJECTOR_ACTIVATION


@dataclass(frozen=True)
class CheckpointConfigs:
    """Every config of a checkpoint, parsed and checked against each other."""

    files: CheckpointFiles
    llm: Qwen3Config
    autoencoder: AutoencoderConfig
    head: HeadConfig
    projector: ProjectorConfig
    # The diffusers layout's model_index.json ``supported_image_sizes`` ([h, w] pairs), as published.
    listed_sizes: tuple[tuple[int, int], ...] | None = None

    @property
    def layout(self) -> Layout:
        return self.files.layout

    @property
    def parallel_num(self) -> int:
        return self.head.parallel_num


def read_configs(files: CheckpointFiles) -> CheckpointConfigs:
    """Parse every config file and check that they agree; errors name the file and the field."""
    problems: list[str] = []
    listed_sizes = _read_model_index(files, problems) if files.model_index is not None else None
    llm = _collect(problems, lambda: _read_llm_config(files))
    autoencoder = _collect(problems, lambda: _read_autoencoder_config(files))
    head = _collect(problems, lambda: _read_head_config(files))
    projector = _collect(problems, lambda: _read_projector_config(files, llm, autoencoder))
    if llm is None or autoencoder is None or head is None or projector is None:
        raise CheckpointError("\n".join(problems))
    configs = CheckpointConfigs(files, llm, autoencoder, head, projector, listed_sizes)
    problems += consistency_problems(configs)
    if problems:
        raise CheckpointError("\n".join(problems))
    return configs


def _collect(problems: list[str], read):  # type: ignore[no-untyped-def]
    try:
        return read()
    except CheckpointError as exc:
        problems.extend(str(exc).splitlines())
        return None


def _config_name(files: CheckpointFiles, component: ComponentFiles) -> str:
    assert component.config is not None
    return files.relative(component.config)


def _without_diffusers_fields(raw: dict) -> dict:
    """Drop the ``_class_name`` / ``_diffusers_version`` / ``_name_or_path`` bookkeeping of diffusers."""
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def _json_object(files: CheckpointFiles, name: str) -> dict:
    raw = read_json(files.root, name)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{name}: expected a JSON object")
    return raw


def _read_llm_config(files: CheckpointFiles) -> Qwen3Config:
    name = _config_name(files, files.llm)
    raw = _json_object(files, name)
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(f"{name}: model_type is {raw.get('model_type')!r}, expected 'qwen3'")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
    if missing:
        raise CheckpointError(f"{name}: missing field(s) {', '.join(missing)}")
    try:
        assert files.llm.config is not None
        return Qwen3Config.from_pretrained(str(files.llm.config.parent), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: {exc}") from exc


AE_TOP_FIELDS = {"ddconfig", "gan_decoder", "checkpoint"}
# What upstream's Encoder/Decoder accept (``resolution`` is accepted and unused).
AE_DD_FIELDS = {"ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "double_z", "resolution"}


def _read_autoencoder_config(files: CheckpointFiles) -> AutoencoderConfig:
    name = _config_name(files, files.autoencoder)
    raw = _without_diffusers_fields(_json_object(files, name))
    unknown = sorted(set(raw) - AE_TOP_FIELDS)
    dd = raw.get("ddconfig")
    if not isinstance(dd, dict):
        raise CheckpointError(f"{name}: no ddconfig object")
    unknown += [f"ddconfig.{k}" for k in sorted(set(dd) - AE_DD_FIELDS)]
    if unknown:
        raise CheckpointError(f"{name}: unknown config field(s) {', '.join(unknown)}")
    if raw.get("checkpoint") is not None:
        raise CheckpointError(f"{name}: checkpoint must be null (weights come from the safetensors file)")
    try:
        return AutoencoderConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: {_reason(exc)}") from exc


def _read_head_config(files: CheckpointFiles) -> HeadConfig:
    name = _config_name(files, files.head)
    raw = _without_diffusers_fields(_json_object(files, name))
    unknown = sorted(set(raw) - {f.name for f in fields(HeadConfig)})
    if unknown:
        raise CheckpointError(f"{name}: unknown config field(s) {', '.join(unknown)}")
    try:
        return HeadConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: {_reason(exc)}") from exc


def _read_projector_config(
    files: CheckpointFiles, llm: Qwen3Config | None, autoencoder: AutoencoderConfig | None
) -> ProjectorConfig | None:
    if files.projector.config is None:  # native: implied by the autoencoder and the LLM, as upstream builds it
        if llm is None or autoencoder is None:
            return None
        return ProjectorConfig(autoencoder.z_channels, llm.hidden_size)
    name = _config_name(files, files.projector)
    raw = _without_diffusers_fields(_json_object(files, name))
    known = {f.name for f in fields(ProjectorConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{name}: unknown config field(s) {', '.join(unknown)}")
    missing = sorted({"in_dim", "out_dim"} - set(raw))
    if missing:
        raise CheckpointError(f"{name}: missing field(s) {', '.join(missing)}")
    return ProjectorConfig(**raw)


def _reason(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


MODEL_INDEX_FIELDS = {"supported_image_sizes", TOKENIZER_FOLDER, *(folder for folder, _ in DIFFUSERS_FOLDERS.values())}


def _read_model_index(files: CheckpointFiles, problems: list[str]) -> tuple[tuple[int, int], ...] | None:
    try:
        raw = _json_object(files, MODEL_INDEX)
    except CheckpointError as exc:
        problems.append(str(exc))
        return None
    if raw.get("_class_name") != PIPELINE_CLASS:
        problems.append(f"{MODEL_INDEX}: _class_name is {raw.get('_class_name')!r}, expected {PIPELINE_CLASS!r}")
    unknown = sorted(set(_without_diffusers_fields(raw)) - MODEL_INDEX_FIELDS)
    if unknown:
        problems.append(f"{MODEL_INDEX}: unknown config field(s) {', '.join(unknown)}")
    expected = {folder: cls for folder, cls in DIFFUSERS_FOLDERS.values()}
    for folder, cls in expected.items():
        entry = raw.get(folder)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == cls):
            problems.append(f"{MODEL_INDEX}: component {folder} should be [library, {cls!r}], found {entry!r}")
    tokenizer = raw.get(TOKENIZER_FOLDER)
    if not (isinstance(tokenizer, list) and len(tokenizer) == 2 and tokenizer[0] == "transformers"):
        problems.append(f"{MODEL_INDEX}: component tokenizer should be ['transformers', ...], found {tokenizer!r}")
    sizes = raw.get("supported_image_sizes")
    if sizes is None:
        return None
    if not (
        isinstance(sizes, list)
        and all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s) for s in sizes)
    ):
        problems.append(f"{MODEL_INDEX}: supported_image_sizes should be a list of [height, width] pairs")
        return None
    return tuple((h, w) for h, w in sizes)


def consistency_problems(configs: CheckpointConfigs) -> list[str]:
    """Fields that must agree across files (one line per disagreement, naming both files)."""
    files = configs.files
    llm_name = _config_name(files, files.llm)
    ae_name = _config_name(files, files.autoencoder)
    head_name = _config_name(files, files.head)
    projector_name = _config_name(files, files.projector) if files.projector.config else None
    hidden = configs.llm.hidden_size
    z = configs.autoencoder.z_channels
    head, projector = configs.head, configs.projector
    problems = []
    if head.ch_cond != hidden:
        problems.append(f"{head_name}: ch_cond {head.ch_cond} != hidden_size {hidden} of {llm_name}")
    if head.ch_target != z:
        problems.append(f"{head_name}: ch_target {head.ch_target} != z_channels {z} of {ae_name}")
    if head.parallel_num not in (16, 64):
        problems.append(f"{head_name}: parallel_num {head.parallel_num} is not 16 or 64 (the released variants)")
    if head.ch_latent % 128:
        problems.append(f"{head_name}: ch_latent {head.ch_latent} is not a multiple of 128 (heads of width 128)")
    if hidden % 4:
        problems.append(f"{llm_name}: hidden_size {hidden} is not a multiple of 4 (2-D sincos positions)")
    if projector_name is not None:
        if projector.out_dim != hidden:
            problems.append(f"{projector_name}: out_dim {projector.out_dim} != hidden_size {hidden} of {llm_name}")
        if projector.in_dim != z:
            problems.append(f"{projector_name}: in_dim {projector.in_dim} != z_channels {z} of {ae_name}")
        if projector.hidden_act != PROJECTOR_ACTIVATION:
            problems.append(f"{projector_name}: hidden_act {projector.hidden_act!r}, expected {PROJECTOR_ACTIVATION!r}")
    return problems
