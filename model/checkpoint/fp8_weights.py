"""fp8 weights stored in a checkpoint's files, and the checks that keep them from making a wrong image.

A checkpoint in our own layout may hold some linear weights pre-quantised (what
``quantization="fp8"`` computes at load, stored): ``<module>.weight`` as ``F8_E4M3`` (or
``F8_E5M2``) with ``<module>.weight_scale`` beside it, so that ``weight ≈ q * scale``. The scale is
float (F32, BF16 or F16) of shape ``[out, 1]``, ``[out]``, ``[1]`` or a scalar. Only the linear
layers :func:`model.quantization.quantized_linears` names may be fp8 (and ``lm_head``, never loaded).

An fp8 tensor read without its scale gives numbers off by the scale: a wrong image, silently.
So every fp8 tensor must have a well-formed scale, every scale must belong to an fp8 weight, and
the reader refuses to read an fp8 tensor alone (``TensorReader.read``). Problems are lines naming
the file, as every other check's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from model.checkpoint.modules import LM_HEAD, MetaModules
from model.checkpoint.tensor_files import FP8_DTYPES, TensorEntry
from model.quantization import SCALE_SUFFIX, quantized_linears

SCALE_DTYPES = {"F32", "BF16", "F16"}


@dataclass
class Fp8Files:
    """One component's fp8 weights: weight key -> its scale's entry, and the problems found.

    ``claimed``: the keys of every scale found beside an fp8 weight, well-formed or not (they are
    not "unexpected keys"; a malformed one is a problem of its own).
    """

    scales: dict[str, TensorEntry] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def dtypes(self, found: dict[str, TensorEntry]) -> Counter[str]:
        """How many fp8 weights of each fp8 dtype."""
        return Counter(found[key].dtype for key in self.scales)


def fp8_weight_keys(modules: MetaModules, component: str) -> set[str]:
    """The file keys of ``component`` that may hold fp8 weights."""
    module, prefix = modules.loaded(component)
    keys = {f"{prefix}{name}.weight" for name in quantized_linears(component, module)}
    return keys | ({LM_HEAD} if component == "llm" else set())


def check_fp8(modules: MetaModules, component: str, found: dict[str, TensorEntry]) -> Fp8Files:
    """The fp8 weights among ``found`` with their scales, and every problem with them."""
    allowed = fp8_weight_keys(modules, component)
    expected = modules.expected_shapes(component)
    result = Fp8Files()
    for key, entry in sorted(found.items()):
        if entry.dtype not in FP8_DTYPES:
            continue
        if key not in allowed:
            result.problems.append(
                f"{entry.where} is {entry.dtype}, but only the linear weights of the LLM and the diffusion head "
                "may be stored in fp8"
            )
            continue
        scale = found.get(key + SCALE_SUFFIX)
        if scale is None:
            result.problems.append(
                f"{entry.where} is {entry.dtype} without its scale {key + SCALE_SUFFIX} "
                "(fp8 values without their scales are not the weights)"
            )
            continue
        result.claimed.add(key + SCALE_SUFFIX)
        rows = expected[key][0]
        if scale.dtype not in SCALE_DTYPES:
            result.problems.append(f"{scale.where} is {scale.dtype}; a scale must be F32, BF16 or F16")
        elif scale.shape not in ((), (1,), (rows,), (rows, 1)):
            result.problems.append(
                f"{scale.where} has shape {list(scale.shape)}; the scale of {key} must be [{rows}, 1], [{rows}], "
                "[1] or a scalar"
            )
        else:
            result.scales[key] = scale
    return result
