"""A checkpoint's config files, read once and checked against each other: :func:`read_configs`.

The one reader of the configs, for every use: the worker's start (verification, memory plan and
loading share its result), ``python -m model.verify``, ``python -m model.plan`` (the shipped config
folders of :data:`CONFIGS_DIR` too: configs without weights are a checkpoint to it) and the
benchmarks. Errors name the file and the field; every problem is reported, not just the first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.autoencoder import AutoencoderConfig
from model.checkpoint.layout import (
    DIFFUSERS_COMPONENTS,
    MODEL_INDEX,
    PIPELINE_CLASS,
    TOKENIZER_FOLDER,
    CheckpointFiles,
    ComponentFiles,
    Layout,
    locate_checkpoint,
    read_json,
)
from model.checkpoint.rope import Rope, check_rotary_embedding, head_dim_of, read_rope, with_transformers4_rope
from model.exceptions import CheckpointError
from model.head import HeadConfig

# The shipped config folders of the released checkpoints (no weights, no tokenizer).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
PROJECTOR_ACTIVATION = "gelu_pytorch_tanh"


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
    # The RoPE the LLM config asks for, whichever transformers wrote it; loading checks the rotary embedding by it.
    rope: Rope
    # The diffusers layout's model_index.json ``supported_image_sizes`` ([h, w] pairs), as published.
    listed_sizes: tuple[tuple[int, int], ...] | None = None

    @property
    def layout(self) -> Layout:
        return self.files.layout

    @property
    def parallel_num(self) -> int:
        return self.head.parallel_num

    @property
    def llm_config_name(self) -> str:
        """The LLM config file, as errors name it (``config.json``, ``text_encoder/config.json``)."""
        return _config_name(self.files, self.files.llm)


def read_configs(checkpoint: CheckpointFiles | str | Path) -> CheckpointConfigs:
    """Parse every config file of ``checkpoint`` (a folder, or its located files) and check that they agree.

    A :class:`CheckpointError` lists every problem, one line each, naming the file and the field.
    """
    files = checkpoint if isinstance(checkpoint, CheckpointFiles) else locate_checkpoint(checkpoint)
    problems: list[str] = []
    listed_sizes = _read_model_index(files, problems) if files.model_index is not None else None
    llm_and_rope = _collect(problems, lambda: _read_llm_config(files))
    llm, rope = llm_and_rope if llm_and_rope is not None else (None, None)
    autoencoder = _collect(problems, lambda: _read_autoencoder_config(files))
    head = _collect(problems, lambda: _read_head_config(files))
    projector = _collect(problems, lambda: _read_projector_config(files, llm, autoencoder))
    if llm is None or rope is None or autoencoder is None or head is None or projector is None:
        raise CheckpointError("\n".join(problems))
    configs = CheckpointConfigs(files, llm, autoencoder, head, projector, rope, listed_sizes)
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


def without_diffusers_fields(raw: dict) -> dict:
    """Drop the ``_class_name`` / ``_diffusers_version`` / ``_name_or_path`` bookkeeping of diffusers."""
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def _json_object(files: CheckpointFiles, name: str) -> dict:
    raw = read_json(files.root, name)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{name}: expected a JSON object")
    return raw


def _read_llm_config(files: CheckpointFiles) -> tuple[Qwen3Config, Rope]:
    """The LLM's ``Qwen3Config`` and the RoPE it asks for, its rotary embedding checked against that RoPE."""
    name = _config_name(files, files.llm)
    raw = _json_object(files, name)
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(f"{name}: model_type is {raw.get('model_type')!r}, expected 'qwen3'")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
    if missing:
        raise CheckpointError(f"{name}: missing field(s) {', '.join(missing)}")
    rope = read_rope(raw, name)
    try:
        # Not from_pretrained: RoPE goes in the keys every supported transformers reads alike (model.checkpoint.rope)
        config = Qwen3Config.from_dict(with_transformers4_rope(raw, rope))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
    with torch.device("cpu"):  # a few floats: what the installed transformers makes of the config, checked now
        rotary = Qwen3RotaryEmbedding(config=config)
    check_rotary_embedding(rotary, rope, head_dim_of(config), name)
    return config, rope


AE_TOP_FIELDS = {"ddconfig", "gan_decoder", "checkpoint"}
# What upstream's Encoder/Decoder accept (``resolution`` is accepted and unused).
AE_DD_FIELDS = {"ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "double_z", "resolution"}


def _read_autoencoder_config(files: CheckpointFiles) -> AutoencoderConfig:
    name = _config_name(files, files.autoencoder)
    raw = without_diffusers_fields(_json_object(files, name))
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
    raw = without_diffusers_fields(_json_object(files, name))
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
    raw = without_diffusers_fields(_json_object(files, name))
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


MODEL_INDEX_FIELDS = {"supported_image_sizes", TOKENIZER_FOLDER, *(c.folder for c in DIFFUSERS_COMPONENTS.values())}


def _read_model_index(files: CheckpointFiles, problems: list[str]) -> tuple[tuple[int, int], ...] | None:
    try:
        raw = _json_object(files, MODEL_INDEX)
    except CheckpointError as exc:
        problems.append(str(exc))
        return None
    if raw.get("_class_name") != PIPELINE_CLASS:
        problems.append(f"{MODEL_INDEX}: _class_name is {raw.get('_class_name')!r}, expected {PIPELINE_CLASS!r}")
    unknown = sorted(set(without_diffusers_fields(raw)) - MODEL_INDEX_FIELDS)
    if unknown:
        problems.append(f"{MODEL_INDEX}: unknown config field(s) {', '.join(unknown)}")
    for component in DIFFUSERS_COMPONENTS.values():
        folder, cls = component.folder, component.class_name
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
