"""Reads a BitDance checkpoint, in the native or the diffusers layout, into modules, key for key.

Every component's keys and shapes are checked against its module before any weight is read
(:func:`model.checkpoint.verification.check_tensors`): a missing file or shard, a missing or
unexpected key or a wrong shape is a :class:`CheckpointError` with one line per problem naming the
file. Modules are built on the meta device; each tensor then goes from the memory-mapped file to
the target device in the target dtype and is put in its place (no ``load_state_dict`` copy). The
weights nobody uses at inference (``lm_head`` and the autoencoder's encoder) are checked, not read.

With ``quantization="fp8"`` the layers :mod:`model.quantization` names become ``Fp8Linear`` on the
meta device and each of their weights is quantised as it arrives (on the CPU straight from the
mapped file); fp8 weights stored with their scales (``model.checkpoint.fp8_weights``) are kept as
they are, or dequantised when loading without quantization.
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
from model.quantization import (
    QUANTIZED_COMPONENTS,
    Fp8Linear,
    Fp8Quantizer,
    check_quantization,
    dequantize,
    swap_to_fp8,
)


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


def load_tensor(
    module: nn.Module,
    name: str,
    entry: TensorEntry,
    scale: TensorEntry | None,
    reader: TensorReader,
    quantizer: Fp8Quantizer,
) -> None:
    """Read one tensor into ``module`` as ``name``; the fp8 cases each way:

    an :class:`Fp8Linear` weight is quantised from the file's own precision, or taken as stored
    when the file holds it in fp8 (``scale``: its scale); an fp8 weight of a plain layer (loaded
    without quantization) is dequantised to the reader's dtype.
    """
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if isinstance(owner, Fp8Linear) and leaf == "weight":
        if scale is None:
            with reader.source(entry) as weight:  # on the CPU: quantised straight from the mapped file
                owner.set_weight(weight, quantizer)
        else:
            owner.set_quantized(reader.read_as_stored(entry), reader.read_as_stored(scale))
    elif scale is not None:
        scales = reader.read_as_stored(scale)
        with reader.source(entry) as quantized:
            place(module, name, dequantize(quantized, scales, reader.dtype))
    else:
        place(module, name, reader.read(entry))


def stream_into(
    module: nn.Module,
    prefix: str,
    entries: dict[str, TensorEntry],
    reader: TensorReader,
    label: str,
    scales: dict[str, TensorEntry] | None = None,
) -> None:
    """Read the entries under ``prefix`` into ``module``, in file order, one tensor at a time.

    ``scales``: the scales of the entries stored in fp8 (weight key -> scale entry), read with them.
    """
    scales = scales or {}
    quantizer = Fp8Quantizer()
    wanted = sorted((e.file, e.start, k) for k, e in entries.items() if k.startswith(prefix))
    for _, _, key in wanted:
        load_tensor(module, key.removeprefix(prefix), entries[key], scales.get(key), reader, quantizer)
    still_meta = [name for name, tensor in module.state_dict().items() if tensor.is_meta]
    if still_meta:  # unreachable after the key check; kept as a safety net
        raise CheckpointError(f"{label}: not loaded: {first_of(still_meta)}")


def load_modules(
    configs: CheckpointConfigs, device: torch.device, dtype: torch.dtype, quantization: str | None = None
) -> LoadedModules:
    """Load every module of the checkpoint ``configs`` were read from onto ``device`` in ``dtype``.

    ``quantization="fp8"``: the layers :mod:`model.quantization` names are kept in fp8, each
    quantised on the device as its weight arrives (or taken as stored, when the file is fp8).
    """
    started = time.perf_counter()
    quantization = check_quantization(quantization)
    modules = MetaModules.build(configs)
    check = check_tensors(modules)
    if check.problems:
        raise CheckpointError("\n".join(check.problems))
    if quantization == "fp8":
        for name in QUANTIZED_COMPONENTS:  # after the key check: the files hold the plain layers' keys
            swap_to_fp8(name, modules.loaded(name)[0])
    with TensorReader(device, dtype) as reader:
        for component in configs.files.components():
            module, prefix = modules.loaded(component.name)
            scales = check.fp8[component.name].scales
            stream_into(module, prefix, check.tensors[component.name], reader, component.weights.label(), scales)
    return modules.finish(device, LoadStats(configs.layout, reader.bytes_read, time.perf_counter() - started))
