"""Reads a BitDance checkpoint, in the native or the diffusers layout, into modules, key for key.

Every component's keys and shapes are checked against its module before any weight is read: a
missing file or shard, a missing or unexpected key or a wrong shape is a :class:`CheckpointError`
with one line per problem naming the file. Modules are built on the meta device; each tensor then
goes from the memory-mapped file to the target device in the target dtype and is put in its place
(no ``load_state_dict`` copy). The weights nobody uses at inference (``lm_head`` and the
autoencoder's encoder) are checked, not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.autoencoder import AutoencoderConfig, BinaryAutoencoder, Decoder
from model.checkpoint import CheckpointConfigs, ComponentFiles, Layout, locate_checkpoint, read_configs
from model.errors import CheckpointError
from model.head import DiffusionHead
from model.llm import build_backbone
from model.projector import TokenProjector
from model.tensor_files import TensorEntry, TensorReader, component_tensors


@dataclass
class LoadStats:
    """What loading did: the checkpoint's layout, bytes read into the modules, and the seconds it took."""

    layout: Layout
    bytes_loaded: int
    seconds: float


@dataclass
class LoadedModules:
    llm_config: Qwen3Config
    backbone: Qwen3Model
    decoder: Decoder
    ae_config: AutoencoderConfig
    head: DiffusionHead
    projector: TokenProjector
    stats: LoadStats | None = None


@dataclass
class MetaModules:
    """Every module of a checkpoint built on the meta device: the shapes its files must have."""

    backbone: Qwen3Model
    autoencoder: BinaryAutoencoder
    head: DiffusionHead
    projector: TokenProjector

    @classmethod
    def build(cls, configs: CheckpointConfigs) -> MetaModules:
        with torch.device("meta"):
            return cls(
                backbone=build_backbone(configs.llm),
                autoencoder=BinaryAutoencoder(configs.autoencoder),
                head=DiffusionHead(configs.head),
                projector=TokenProjector(configs.projector.in_dim, configs.projector.out_dim),
            )

    def expected_shapes(self, component: str, llm: Qwen3Config) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, as the component's safetensors must hold them."""
        if component == "llm":
            shapes = expected_shapes(self.backbone, "model.")
            shapes["lm_head.weight"] = (llm.vocab_size, llm.hidden_size)
            return shapes
        module = {"autoencoder": self.autoencoder, "head": self.head, "projector": self.projector}[component]
        return expected_shapes(module)

    def target(self, component: str) -> tuple[nn.Module, str]:
        """The module a component's tensors are loaded into, and the prefix of the keys it takes."""
        return {
            "llm": (self.backbone, "model."),
            "autoencoder": (self.autoencoder.decoder, "decoder."),
            "head": (self.head, ""),
            "projector": (self.projector, ""),
        }[component]


def expected_shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def key_problems(
    component: ComponentFiles, expected: dict[str, tuple[int, ...]], found: dict[str, TensorEntry]
) -> list[str]:
    """Strict key and shape matching: one line per kind of problem, naming the file and the first keys."""
    weights = component.weights
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{weights.label()}: missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"{weights.label()}: unexpected keys {_first(unexpected)}")
    wrong: dict[Path, list[str]] = {}
    for key in sorted(set(expected) & set(found)):
        if tuple(expected[key]) != found[key].shape:
            wrong.setdefault(found[key].file, []).append(key)
    for path, keys in sorted(wrong.items()):
        listed = ", ".join(f"{k} {found[k].shape} != {tuple(expected[k])}" for k in keys[:5])
        problems.append(f"{weights.relative(path)}: shape mismatch {listed}")
    return problems


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def checked_tensors(configs: CheckpointConfigs, modules: MetaModules) -> dict[str, dict[str, TensorEntry]]:
    """Component -> its tensors, after every file, key and shape was checked (all problems at once)."""
    problems: list[str] = []
    tensors: dict[str, dict[str, TensorEntry]] = {}
    for component in configs.files.components():
        try:
            found = component_tensors(component.weights)
        except CheckpointError as exc:
            problems.extend(str(exc).splitlines())
            continue
        problems += key_problems(component, modules.expected_shapes(component.name, configs.llm), found)
        tensors[component.name] = found
    if problems:
        raise CheckpointError("\n".join(problems))
    return tensors


def place(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in the module as parameter or buffer ``name`` (it replaces the meta placeholder)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:  # unreachable after the key check; kept as a safety net
        raise CheckpointError(f"no parameter or buffer {name} in {type(module).__name__}")


def stream_into(
    module: nn.Module, prefix: str, entries: dict[str, TensorEntry], reader: TensorReader, label: str
) -> None:
    """Read the entries under ``prefix`` into ``module``, in file order, one tensor at a time."""
    wanted = sorted((e.file, e.start, k) for k, e in entries.items() if k.startswith(prefix))
    for _, _, key in wanted:
        place(module, key.removeprefix(prefix), reader.read(entries[key]))
    still_meta = [name for name, tensor in module.state_dict().items() if tensor.is_meta]
    if still_meta:  # unreachable after the key check; kept as a safety net
        raise CheckpointError(f"{label}: not loaded: {_first(still_meta)}")
    module.eval().requires_grad_(False)


def load_modules(path: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModules:
    """Load every module of the checkpoint at ``path`` (either layout) onto ``device`` in ``dtype``."""
    started = time.perf_counter()
    configs = read_configs(locate_checkpoint(path))
    modules = MetaModules.build(configs)
    tensors = checked_tensors(configs, modules)
    with TensorReader(device, dtype) as reader:
        for component in configs.files.components():
            module, prefix = modules.target(component.name)
            stream_into(module, prefix, tensors[component.name], reader, component.weights.label())
    backbone = modules.backbone
    with torch.device(device):  # its inv_freq is a non-persistent buffer, built on the device
        backbone.rotary_emb = Qwen3RotaryEmbedding(config=configs.llm)
    stats = LoadStats(configs.layout, reader.bytes_read, time.perf_counter() - started)
    return LoadedModules(
        configs.llm, backbone, modules.autoencoder.decoder, configs.autoencoder, modules.head, modules.projector, stats
    )
