"""Reads a checkpoint in the native BitDance layout into modules, key for key.

Every file's keys are checked against the modules before any weight is read: a missing file, a
missing or unexpected key or a wrong shape is a :class:`CheckpointError` naming the file and key.
Modules are built on the meta device and tensors are read straight onto the target device, then
cast to the target dtype, so no full float32 copy of a large model is made in host memory. The
weights nobody uses at inference (``lm_head`` and the autoencoder's encoder) are checked, not read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.autoencoder import AutoencoderConfig, BinaryAutoencoder, Decoder
from model.errors import CheckpointError
from model.head import DiffusionHead, HeadConfig
from model.llm import build_backbone
from model.projector import TokenProjector

LLM_WEIGHTS = "model.safetensors"
LLM_INDEX = "model.safetensors.index.json"
AE_CONFIG, AE_WEIGHTS = "ae_config.json", "ae.safetensors"
HEAD_CONFIG, HEAD_WEIGHTS = "vision_head_config.json", "vision_head.safetensors"
PROJECTOR_WEIGHTS = "projector.safetensors"


@dataclass
class LoadedModules:
    llm_config: Qwen3Config
    backbone: Qwen3Model
    decoder: Decoder
    ae_config: AutoencoderConfig
    head: DiffusionHead
    projector: TokenProjector


def require_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {name} is missing from {root}")
    return path


def read_json(root: Path, name: str) -> dict:
    try:
        return json.loads(require_file(root, name).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{root / name} is not valid JSON: {exc}") from exc


def llm_weight_files(root: Path) -> dict[str, Path]:
    """Key -> file for the Qwen3 weights, single-file or sharded with an index."""
    if (root / LLM_WEIGHTS).is_file():
        return dict.fromkeys(_file_keys(root / LLM_WEIGHTS), root / LLM_WEIGHTS)
    if (root / LLM_INDEX).is_file():
        weight_map = read_json(root, LLM_INDEX).get("weight_map", {})
        for shard in set(weight_map.values()):
            require_file(root, shard)
        return {key: root / shard for key, shard in weight_map.items()}
    raise CheckpointError(f"checkpoint file {LLM_WEIGHTS} (or {LLM_INDEX} with its shards) is missing from {root}")


def _file_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _file_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if files.get(key) == path:
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_keys(label: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    """Strict key and shape matching; the error names the file and the first offending keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if wrong:
        problems.append("shape mismatch " + ", ".join(f"{k} {found[k]} != {expected[k]}" for k in wrong[:5]))
    if problems:
        raise CheckpointError(f"{label}: " + "; ".join(problems))


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def expected_shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def read_tensors(
    files: dict[str, Path], keys: Iterable[str], device: torch.device, dtype: torch.dtype, strip: str = ""
) -> dict[str, torch.Tensor]:
    """Read ``keys`` onto ``device`` in ``dtype``, one tensor at a time."""
    wanted = set(keys)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted({files[k] for k in wanted}):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key in wanted and files[key] == path:
                    tensors[key.removeprefix(strip)] = f.get_tensor(key).to(dtype)
    return tensors


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:  # guarded by check_keys; kept as a safety net
        raise CheckpointError(f"{label}: could not load keys {result.missing_keys or result.unexpected_keys}")
    module.eval().requires_grad_(False)


def load_backbone(root: Path, device: torch.device, dtype: torch.dtype) -> tuple[Qwen3Config, Qwen3Model]:
    require_file(root, "config.json")
    config = Qwen3Config.from_pretrained(str(root), local_files_only=True)
    with torch.device("meta"):
        backbone = build_backbone(config)
    files = llm_weight_files(root)
    expected = expected_shapes(backbone, "model.")
    expected["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    check_keys(LLM_WEIGHTS, expected, _file_shapes(files))
    keys = [k for k in files if k.startswith("model.")]
    _load_into(backbone, read_tensors(files, keys, device, dtype, strip="model."), LLM_WEIGHTS)
    with torch.device(device):  # its inv_freq is a non-persistent buffer, built on the device
        backbone.rotary_emb = Qwen3RotaryEmbedding(config=config)
    return config, backbone


def load_decoder(root: Path, device: torch.device, dtype: torch.dtype) -> tuple[AutoencoderConfig, Decoder]:
    try:
        config = AutoencoderConfig.from_dict(read_json(root, AE_CONFIG))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{AE_CONFIG}: {exc}") from exc
    with torch.device("meta"):
        autoencoder = BinaryAutoencoder(config)
    files = dict.fromkeys(_file_keys(require_file(root, AE_WEIGHTS)), root / AE_WEIGHTS)
    check_keys(AE_WEIGHTS, expected_shapes(autoencoder), _file_shapes(files))
    keys = [k for k in files if k.startswith("decoder.")]
    decoder = autoencoder.decoder
    _load_into(decoder, read_tensors(files, keys, device, dtype, strip="decoder."), AE_WEIGHTS)
    return config, decoder


def load_simple(module: nn.Module, path: Path, device: torch.device, dtype: torch.dtype) -> None:
    files = dict.fromkeys(_file_keys(path), path)
    check_keys(path.name, expected_shapes(module), _file_shapes(files))
    _load_into(module, read_tensors(files, files, device, dtype), path.name)


def load_modules(path: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModules:
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    try:
        head_config = HeadConfig.from_dict(read_json(root, HEAD_CONFIG))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{HEAD_CONFIG}: {exc}") from exc
    for name in (AE_WEIGHTS, HEAD_WEIGHTS, PROJECTOR_WEIGHTS, AE_CONFIG):
        require_file(root, name)
    llm_config, backbone = load_backbone(root, device, dtype)
    ae_config, decoder = load_decoder(root, device, dtype)
    with torch.device("meta"):
        head = DiffusionHead(head_config)
        projector = TokenProjector(ae_config.z_channels, llm_config.hidden_size)
    load_simple(head, root / HEAD_WEIGHTS, device, dtype)
    load_simple(projector, root / PROJECTOR_WEIGHTS, device, dtype)
    return LoadedModules(llm_config, backbone, decoder, ae_config, head, projector)
