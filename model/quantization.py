"""fp8 weights (``quantization="fp8"``): the big linear layers kept in fp8 e4m3, dequantised per forward.

Why: BitDance-14B's weights are 29.9 GiB in bf16, more than the 24 GB GPUs most people own. Its
LLM's linear layers hold 13.2 B of its 16.0 B parameters and the diffusion head's another 1.8 B;
stored in one byte each they bring the weights to 0.534 of bf16 (LLM alone: 0.588).

Format: each quantised ``nn.Linear`` becomes an :class:`Fp8Linear` holding ``weight``
(``float8_e4m3fn``, ``[out, in]``) and ``weight_scale`` (float32, ``[out, 1]``) with
``weight ≈ q * scale``, one scale per output channel (``amax / 448`` of its row, so a row with
outliers does not cost the others their precision). The bias stays in the compute dtype.

Compute: per forward, the fp8 weight is cast to the compute dtype (autocast's, else the input's),
which is exact (every e4m3 value is a bf16 value), multiplied as usual, and the output scaled by
the row scales. That works on any GPU and on the CPU; the temporary is one weight in the compute
dtype. ``torch._scaled_mm`` (fp8 tensor cores on Ada/Hopper GPUs) is not used: on the CPU it is
slower than this (measured), and no GPU was available to measure whether it pays there.

Which layers: every linear of the Qwen3 body (q, k, v, o, gate, up, down) and of the diffusion
head except the three that read or write the 32-bit token and time features directly
(:data:`HEAD_KEPT`, under 0.1 % of its weights). Embeddings, norms, the projector and the
autoencoder stay in the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("fp8",)
NO_QUANTIZATION = "none"  # the settings' and the command lines' spelling of "no quantization"
FP8_DTYPE_NAME = "float8_e4m3fn"
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_SUFFIX = "_scale"  # ``<module>.weight`` -> ``<module>.weight_scale``
QUANTIZED_COMPONENTS = ("llm", "head")
# Head linears kept in the compute dtype, by their names inside ``DiffusionHead``.
HEAD_KEPT = frozenset({"net.input_proj", "net.final_layer.linear", "net.time_embed.mlp.0"})
QUANTIZE_CHUNK = 1 << 22  # elements quantised at once (16 MiB of float32): bounds the temporary


def check_quantization(value: str | None) -> str | None:
    """``None`` (or ``"none"``) for no quantization, or a name of :data:`QUANTIZATIONS`; else a ValueError naming it."""
    if value is None or value == NO_QUANTIZATION:
        return None
    if value in QUANTIZATIONS:
        fp8_dtype()  # refuse now if this torch has no fp8
        return value
    expected = ", ".join(repr(q) for q in (NO_QUANTIZATION, *QUANTIZATIONS))
    raise ValueError(f"unknown quantization {value!r}: expected one of {expected} (or None)")


def fp8_dtype() -> torch.dtype:
    """``torch.float8_e4m3fn``; a RuntimeError naming the torch version where it is missing."""
    dtype = getattr(torch, FP8_DTYPE_NAME, None)
    if not isinstance(dtype, torch.dtype):
        raise RuntimeError(f"quantization 'fp8' needs torch.{FP8_DTYPE_NAME}, which torch {torch.__version__} lacks")
    return dtype


@torch.no_grad()
def quantize_fp8(weight: torch.Tensor, scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` weight -> (``float8_e4m3fn`` ``[out, in]``, float32 scales ``[out, 1]``), on its device.

    Each row is scaled so that its largest magnitude is 448 (an all-zero row gets scale 1), then
    rounded to nearest. ``weight`` is only read (it may be a view of a mapped file), a block of
    rows at a time through one float32 buffer of :data:`QUANTIZE_CHUNK` elements (``scratch``,
    when given, is reused: a load quantising hundreds of weights allocates it once); the
    quantised weight and its scales are the only other allocations.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    block = max(1, QUANTIZE_CHUNK // max(columns, 1))
    if scratch is None or scratch.numel() < min(block, rows) * columns or scratch.device != weight.device:
        scratch = torch.empty(min(block, rows) * columns, dtype=torch.float32, device=weight.device)
    quantized = torch.empty(weight.shape, dtype=fp8_dtype(), device=weight.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=weight.device)
    blocks = [slice(start, min(start + block, rows)) for start in range(0, rows, block)]
    for part in blocks:
        values = scratch[: (part.stop - part.start) * columns].view(-1, columns)
        torch.amax(values.copy_(weight[part]).abs_(), dim=1, keepdim=True, out=scale[part])
    scale.div_(FP8_MAX).masked_fill_(scale == 0, 1.0)
    for part in blocks:
        values = scratch[: (part.stop - part.start) * columns].view(-1, columns)
        quantized[part].copy_(values.copy_(weight[part]).div_(scale[part]).clamp_(-FP8_MAX, FP8_MAX))
    return quantized, scale


class Fp8Quantizer:
    """:func:`quantize_fp8` for a whole load: one float32 buffer for every weight, on one device."""

    def __init__(self) -> None:
        self.scratch: torch.Tensor | None = None

    def __call__(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scratch is None or self.scratch.device != weight.device:
            self.scratch = torch.empty(QUANTIZE_CHUNK, dtype=torch.float32, device=weight.device)
        return quantize_fp8(weight, self.scratch)


def scale_rows(scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """A stored scale (``()``, ``[1]``, ``[out]`` or ``[out, 1]``, any float dtype) as float32 ``[out, 1]``."""
    return scale.float().reshape(-1, 1).expand(out_features, 1).contiguous()


def dequantize(quantized: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` in ``dtype`` (computed in float32): a pre-quantised weight loaded without quantization.

    Written into its result, with no temporary (``quantized`` may be a view of a mapped file).
    """
    out = torch.empty(quantized.shape, dtype=dtype, device=quantized.device)
    return out.copy_(quantized).mul_(scale_rows(scale, quantized.shape[0]).to(quantized.device))


class Fp8Linear(nn.Module):
    """A linear layer with an fp8 e4m3 weight and per-output-channel float32 scales, dequantised per forward."""

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: nn.Parameter | None, device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=fp8_dtype(), device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, 1, dtype=torch.float32, device=device))
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        """The layer for ``linear``: placeholders on the meta device, else its weight quantised."""
        layer = cls(linear.in_features, linear.out_features, linear.bias, linear.weight.device)
        if not linear.weight.is_meta:
            layer.set_weight(linear.weight)
        return layer

    def set_weight(self, weight: torch.Tensor, quantizer: Fp8Quantizer | None = None) -> None:
        """Quantise a full-precision ``[out, in]`` weight into this layer, on the weight's device."""
        self.set_quantized(*(quantizer(weight) if quantizer is not None else quantize_fp8(weight)))

    def set_quantized(self, quantized: torch.Tensor, scale: torch.Tensor) -> None:
        """Take an fp8 weight and its scale (any shape :func:`scale_rows` accepts) as they are."""
        self._buffers["weight"] = quantized
        self._buffers["weight_scale"] = scale_rows(scale, self.out_features).to(quantized.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        out = F.linear(x.to(dtype), self.weight.to(dtype))  # the cast is exact; one weight-sized temporary
        out.mul_(self.weight_scale.view(-1))  # computed in float32, rounded once to the output's dtype
        return out if self.bias is None else out.add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def quantized_linears(component: str, module: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of ``component`` (its loaded module, e.g. the Qwen3 body) that fp8 quantises, by name."""
    if component not in QUANTIZED_COMPONENTS:
        return {}
    return {
        name: child
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and not (component == "head" and name in HEAD_KEPT)
    }


def swap_to_fp8(component: str, module: nn.Module) -> dict[str, Fp8Linear]:
    """Replace the layers :func:`quantized_linears` names by :class:`Fp8Linear` (meta placeholders stay meta)."""
    swapped = {}
    for name, linear in quantized_linears(component, module).items():
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        swapped[name] = Fp8Linear.from_linear(linear)
        setattr(parent, leaf, swapped[name])
    return swapped
