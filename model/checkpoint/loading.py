"""Reads a BitDance checkpoint, in the native or the diffusers layout, into modules, key for key.

Every component's keys and shapes are checked against its module before any weight is read
(:func:`model.checkpoint.verification.check_tensors`): a missing file or shard, a missing or
unexpected key or a wrong shape is a :class:`CheckpointError` with one line per problem naming the
file. Modules are built on the meta device; each tensor then goes from the memory-mapped file to
the target device in the target dtype and is put in its place (no ``load_state_dict`` copy). The
weights nobody uses at inference (``lm_head`` and the autoencoder's encoder) are checked, not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from model.checkpoint.configs import CheckpointConfigs
from model.checkpoint.layout import Layout
from model.checkpoint.modules import LoadedModules, MetaModules
from model.checkpoint.tensor_files import TensorEntry, TensorReader
from model.checkpoint.verification import check_tensors
from model.exceptions import CheckpointError, first_of


@dataclass
class LoadStats:
    """What loading did: the checkpoint's layout, bytes read into the modules, and the seconds it took."""

    layout: Layout
    bytes_loaded: int
    seconds: float


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
        raise CheckpointError(f"{label}: not loaded: {first_of(still_meta)}")


def load_modules(configs: CheckpointConfigs, device: torch.device, dtype: torch.dtype) -> LoadedModules:
    """Load every module of the checkpoint ``configs`` were read from onto ``device`` in ``dtype``."""
    started = time.perf_counter()
    modules = MetaModules.build(configs)
    check = check_tensors(modules)
    if check.problems:
        raise CheckpointError("\n".join(check.problems))
    with TensorReader(device, dtype) as reader:
        for component in configs.files.components():
            module, prefix = modules.loaded(component.name)
            stream_into(module, prefix, check.tensors[component.name], reader, component.weights.label())
    return modules.finish(device, LoadStats(configs.layout, reader.bytes_read, time.perf_counter() - started))
