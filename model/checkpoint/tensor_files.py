"""Safetensors files: headers checked without reading data, tensors read one at a time, files written aligned.

:func:`read_header` parses a file's header itself and checks it against the file's size, so a
truncated or garbled file is an error naming it before any tensor is touched (reading past the end
of a memory-mapped file would kill the process with SIGBUS instead). :class:`TensorReader` maps each
file once, copies one tensor at a time from the mapping straight to the target device in the target
dtype, and then drops that tensor's pages from the mapping, so host memory holds at most the loaded
tensors plus the one being read: no whole-file copy, no float32 intermediate for a bf16 target.

Every loaded tensor is a fresh allocation (64-byte aligned), never a view of the mapping, so results
depend on the weights alone and not on where a file puts them: on the CPU, matrix-vector products
(MKL's sgemv) round differently for weights that are not 16-byte aligned. :func:`write_safetensors`
writes files in which every tensor is 64-byte aligned, so that code reading them in place (the
official pipeline on the CPU) computes what our loaded copies compute.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from model.checkpoint.layout import WeightFiles
from model.exceptions import CheckpointError, first_of

# safetensors dtype name -> (name of the torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
# The ones the installed torch has (the fp8 dtypes are missing from old versions): name -> (dtype, bytes)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    name: (getattr(torch, attr), size) for name, (attr, size) in SAFETENSORS_DTYPES.items() if hasattr(torch, attr)
}
FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}  # meaningful only with their scales (``model.checkpoint.fp8_weights``)
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", *FP8_DTYPES}
MAX_HEADER_BYTES = 100_000_000
PAGE = mmap.PAGESIZE
ALIGNMENT = 64


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as its file's header describes it; ``start``/``end`` are absolute file offsets."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    name: str = ""  # the tensor's key
    label: str = ""  # its file as messages name it

    @property
    def where(self) -> str:
        """``file: key``, how a message names this tensor."""
        return f"{self.label or self.file.name}: {self.name}"

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path, label: str) -> dict[str, TensorEntry]:
    """Tensor name -> entry; ``label`` (the file as messages name it) prefixes every error."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{label}: truncated or not a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{label}: truncated or not a safetensors file (header of {header_len} bytes, file of {size})"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{label}: unreadable ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{label}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{label}: unreadable safetensors header (not a JSON object)")
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, label, name, info, data_start)
    data_end = max((e.end for e in entries.values()), default=data_start)
    if data_end > size:
        raise CheckpointError(
            f"{label}: truncated: its tensors need {data_end - data_start} bytes of data, the file holds "
            f"{size - data_start}"
        )
    return entries


def _entry(path: Path, label: str, name: str, info: object, data_start: int) -> TensorEntry:
    try:
        assert isinstance(info, dict)
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        assert all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end))
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{label}: unreadable safetensors header entry for {name}") from exc
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{label}: {name} has an unknown dtype {dtype!r}")
    if dtype not in DTYPES:
        raise CheckpointError(
            f"{label}: {name} is {dtype}, which the installed torch {torch.__version__} cannot hold "
            f"(no torch.{SAFETENSORS_DTYPES[dtype][0]}; upgrade torch to read this checkpoint)"
        )
    if end - begin != math.prod(shape) * DTYPES[dtype][1]:
        raise CheckpointError(f"{label}: {name} has {end - begin} bytes of data for shape {list(shape)} {dtype}")
    return TensorEntry(path, dtype, shape, data_start + begin, data_start + end, name, label)


def component_tensors(weights: WeightFiles) -> dict[str, TensorEntry]:
    """Every tensor of one component (single file or shards), checked against the index when sharded."""
    files = weights.files()
    headers = {path: read_header(path, weights.relative(path)) for path in files}
    if not weights.sharded:
        return headers[files[0]]
    entries: dict[str, TensorEntry] = {}
    absent: dict[Path, list[str]] = {}
    for key, path in weights.weight_map().items():
        entry = headers[path].get(key)
        if entry is None:
            absent.setdefault(path, []).append(key)
        else:
            entries[key] = entry
    if absent:
        lines = [
            f"{weights.relative(path)}: lacks {first_of(sorted(keys))} (listed in {weights.index.name})"
            for path, keys in sorted(absent.items())
        ]
        raise CheckpointError("\n".join(lines))
    return entries


class TensorReader:
    """Reads tensors to ``device`` in ``dtype`` (floating point only), one at a time, from mapped files."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.bytes_read = 0
        self._maps: dict[Path, mmap.mmap] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            fd = os.open(path, os.O_RDONLY)
            try:  # private and writable so torch may wrap it; nothing ever writes to it
                self._maps[path] = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        return self._maps[path]

    def read(self, entry: TensorEntry) -> torch.Tensor:
        """The tensor in the reader's dtype (floating point) or its own (other types).

        An fp8 tensor is refused: without its scale its values are not the weights (a wrong image,
        silently); fp8 weights are read with :meth:`read_as_stored` next to their scales.
        """
        if entry.dtype in FP8_DTYPES:
            raise CheckpointError(f"{entry.where}: {entry.dtype} tensor read without its scale")
        file_dtype = DTYPES[entry.dtype][0]
        return self._read(entry, self.dtype if entry.dtype in FLOAT_DTYPES else file_dtype)

    def read_as_stored(self, entry: TensorEntry) -> torch.Tensor:
        """The tensor in its file's dtype, on the device: an fp8 weight or its scale."""
        return self._read(entry, DTYPES[entry.dtype][0])

    @contextlib.contextmanager
    def source(self, entry: TensorEntry) -> Iterator[torch.Tensor]:
        """The tensor in its file's dtype for the ``with`` block only: what a quantisation reads.

        On the CPU it is a view of the mapped file, no copy (the quantised result is the only
        allocation, so host memory holds no full-precision copy and no heap fills with freed
        ones); its pages are dropped after the block. On CUDA it is a copy on the device.
        """
        if self.device.type != "cpu" or entry.numel == 0:
            yield self.read_as_stored(entry)
            return
        mapped = self._map(entry.file)
        view = torch.frombuffer(mapped, dtype=DTYPES[entry.dtype][0], count=entry.numel, offset=entry.start)
        try:
            yield view.view(entry.shape)
        finally:
            del view
            self._release(mapped, entry)
            self.bytes_read += entry.nbytes

    def _read(self, entry: TensorEntry, target: torch.dtype) -> torch.Tensor:
        file_dtype = DTYPES[entry.dtype][0]
        if entry.numel == 0:
            return torch.empty(entry.shape, dtype=target, device=self.device)
        mapped = self._map(entry.file)
        view = torch.frombuffer(mapped, dtype=file_dtype, count=entry.numel, offset=entry.start).view(entry.shape)
        # One copy, straight from the mapped pages: converted in place of the copy on the CPU; sent in
        # the file's dtype and converted on the device for CUDA (torch's copy never converts on the host).
        tensor = view.to(device=self.device, dtype=target, copy=True)
        del view
        self._release(mapped, entry)
        self.bytes_read += entry.nbytes
        return tensor

    @staticmethod
    def _release(mapped: mmap.mmap, entry: TensorEntry) -> None:
        """Drop the tensor's pages from this process (they stay in the page cache, not in our RSS)."""
        start = entry.start - entry.start % PAGE
        length = entry.end - start
        if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED, start, length)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A standard safetensors file whose tensors all start 64-byte aligned.

    The header is padded with spaces (as the format allows) so the data starts aligned; tensors
    whose size is a multiple of 64 bytes come first, the few others (a 3-channel bias) last.
    """
    names = {dtype: name for name, (dtype, _) in DTYPES.items()}
    order = sorted(tensors, key=lambda k: (_nbytes(tensors[k]) % ALIGNMENT != 0, k))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in order:
        tensor = tensors[key]
        header[key] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + _nbytes(tensor)],
        }
        offset += _nbytes(tensor)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in order:
            data = tensors[key].detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(data.numpy().tobytes())


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
