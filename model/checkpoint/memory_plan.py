"""Memory plan of a checkpoint from its config files alone (``python -m model.plan PATH`` prints it).

No weight is read: the modules are built on PyTorch's meta device to count their parameters, and
the KV cache and the activations of a generation are computed from the shapes the pipeline
creates. For each supported size, batch 1, 4 and 8, with and without guidance, the plan gives:

* ``kv_cache_bytes``: what :class:`model.llm.PatchKVCache` allocates, keys and values of every layer
  for every LLM row (two rows per image with guidance) over the prompt, the image prefix and every
  image token (exact: the tests compare it with the real cache of a small model);
* ``activation_bytes``: the largest set of temporaries alive at once besides the weights and the
  KV cache, over the stages of a generation (LLM prefill, LLM step, diffusion head, decoder);
* ``peak_bytes``: weights + max(KV cache + the sampling stages' temporaries, the decoder's), as
  the KV cache is freed before the images are decoded.

Each stage's temporaries are listed tensor by tensor below, as the code creates them; the tests
measure the live tensors of the real pipeline on the CPU and check these numbers against them.
On CUDA (and for bf16 weights on the CPU, which runs the same arithmetic: ``model.precision``) the
pipeline runs bf16 weights under bf16 autocast: matrix products give bf16, while the
normalisations give float32, and the LLM's residual stream is float32 (its inputs add the float32
position table), so those widths are counted at 4 bytes. With ``quantization="fp8"`` the
quantised linear weights count one byte each plus a float32 scale per output channel, and the
largest of them cast to the compute dtype (alive during its layer's forward) is added to the
sampling stages. Not counted: the CUDA context and the kernels' own workspaces (cuBLAS, flash
attention), which :data:`CUDA_RESERVE_BYTES` stands for in the worker's start-up check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import Qwen3Config

from model.autoencoder import AutoencoderConfig
from model.checkpoint.configs import CheckpointConfigs
from model.checkpoint.layout import COMPONENTS
from model.checkpoint.modules import MetaModules
from model.precision import default_dtype, uses_autocast
from model.prompts import image_prefix_tokens
from model.quantization import check_quantization, quantized_linears
from model.resolutions import supported_sizes

BATCHES = (1, 4, 8)
DEFAULT_PROMPT_TOKENS = 256  # the conditional prompt with its chat template
CUDA_RESERVE_BYTES = 2 * 1024**3
GIB = 1024**3
FLOAT32 = 4


# ---------------------------------------------------------------------------------------------
# Device rules


@dataclass(frozen=True)
class DeviceRules:
    """Byte widths of the tensors a run creates: weights, matrix products, norms, LLM stream.

    Keyed by device, weight dtype and quantization, as the pipeline runs them: under bf16 autocast
    (CUDA, and bf16 weights on the CPU: ``model.precision``) matrix products give bf16 and norms
    float32; float32 weights on the CPU give float32 everywhere. With ``quantization="fp8"`` the
    quantised linear weights take one byte each plus a float32 scale per output channel.
    """

    name: str
    weight: int
    compute: int  # matrix-product and convolution outputs
    norm: int  # LayerNorm / GroupNorm outputs (float32 under autocast)
    stream: int  # the LLM's hidden states between layers
    autocast: bool  # conv/linear inputs of another dtype are cast first (a temporary copy)
    sigmoid_temporary: bool = False  # swish_ makes a full-size sigmoid temporary (CUDA; the CPU works in chunks)
    dtype: str = "float32"  # the weights' (the unquantised ones')
    quantization: str | None = None

    @classmethod
    def for_device(cls, device: str, dtype: torch.dtype | None = None, quantization: str | None = None) -> DeviceRules:
        """The rules of ``device`` with ``dtype`` weights (default: the pipeline's for that device)."""
        target = torch.device(device)
        dtype = dtype or default_dtype(target)
        width = torch.empty((), dtype=dtype).element_size()
        quantization = check_quantization(quantization)
        name, dtype_name = target.type, str(dtype).removeprefix("torch.")
        if uses_autocast(target, dtype):
            cuda = target.type == "cuda"
            return cls(name, width, 2, FLOAT32, FLOAT32, True, cuda, dtype_name, quantization)
        return cls(name, width, width, width, max(width, FLOAT32), False, False, dtype_name, quantization)

    def describe(self) -> str:
        """``bfloat16``, or ``bfloat16, fp8 linears``: the weights as the plan counts them."""
        if self.quantization == "fp8":
            return f"{self.dtype}, LLM and head linears in fp8 e4m3 with float32 per-channel scales"
        return self.dtype


# ---------------------------------------------------------------------------------------------
# KV cache and activations


@dataclass(frozen=True)
class Generation:
    """One ``generate_batch`` call: images, guidance, size and the conditional prompt's length."""

    images: int
    guidance: bool
    height: int
    width: int
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS

    @property
    def rows(self) -> int:
        """LLM and head rows: a conditional and an unconditional row per image with guidance."""
        return self.images * (2 if self.guidance else 1)


def image_tokens(configs: CheckpointConfigs, height: int, width: int) -> int:
    patch = configs.autoencoder.patch_size
    return (height // patch) * (width // patch)


def cache_capacity(configs: CheckpointConfigs, generation: Generation) -> int:
    """Positions per row of :class:`PatchKVCache`: prompt + image prefix + every image token.

    ``PatchDecoder.prefill`` sizes it ``length - block + num_blocks * block``: the prefix is
    ``<|vision_start|> <|res_H|>`` plus a first block of ``P`` tokens, and each of the
    ``image_tokens / P`` patches is one block (the first block's positions are reused by none).
    """
    parallel_num = configs.head.parallel_num
    prefix = len(image_prefix_tokens(1, 1, parallel_num))
    blocks = image_tokens(configs, generation.height, generation.width) // parallel_num
    return generation.prompt_tokens + prefix - parallel_num + blocks * parallel_num


def _head_dim(llm: Qwen3Config) -> int:
    return int(getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads)


def kv_cache_bytes(configs: CheckpointConfigs, generation: Generation, rules: DeviceRules) -> int:
    """Keys and values ``(rows, kv_heads, capacity, head_dim)`` of every layer, in the compute dtype."""
    llm = configs.llm
    kv_heads = int(llm.num_key_value_heads or llm.num_attention_heads)
    per_position = 2 * llm.num_hidden_layers * kv_heads * _head_dim(llm)
    return generation.rows * cache_capacity(configs, generation) * per_position * rules.compute


def llm_block_bytes(configs: CheckpointConfigs, rows: int, tokens: int, rules: DeviceRules) -> int:
    """Temporaries of one decoder layer run on ``rows x tokens``, at its peak (the SwiGLU product).

    Alive then: the layer's input and its post-attention residual, the normed MLP input and the
    block's input embeddings (``hidden`` wide, stream dtype; one more for the row reordering of
    mixed prompt lengths), RoPE's cos and sin (``head_dim``), and ``silu(gate)``, ``up`` and their
    product (``intermediate`` wide, compute dtype).
    """
    llm = configs.llm
    stream = (5 * llm.hidden_size + 2 * _head_dim(llm)) * rules.stream
    mlp = 3 * llm.intermediate_size * rules.compute
    return rows * tokens * (stream + mlp)


def head_bytes(configs: CheckpointConfigs, rows: int, rules: DeviceRules) -> int:
    """Temporaries of the diffusion head sampling one patch, at its peak (the SwiGLU product).

    Kept for the whole patch: the condition embedding, ``y = silu(t + c)``, the adaLN output (6C)
    and its two ``1 + scale`` tensors. In a block: its input ``x`` (held by the caller) and the new
    residual, the modulated norm ``h``, ``w1(h)`` (3C), ``silu(gate)`` and the product (1.5C each):
    19C per token, plus the sample and its guided rows (``ch_target`` each).
    """
    channels, target = configs.head.ch_latent, configs.head.ch_target
    kept = 10 * channels * rules.compute  # cond, y, adaLN 6C, 1 + scale twice
    block = 2 * channels * rules.compute + channels * rules.norm + 6 * channels * rules.compute
    return rows * configs.head.parallel_num * (kept + block + 2 * target * FLOAT32)


class _Live:
    """Running total of live bytes, and its maximum: the decoder's liveness, walked op by op."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def add(self, nbytes: int) -> int:
        self.now += nbytes
        self.peak = max(self.peak, self.now)
        return nbytes

    def free(self, *sizes: int) -> None:
        self.now -= sum(sizes)


def decoder_bytes(ae: AutoencoderConfig, height: int, width: int, rules: DeviceRules) -> int:
    """Peak of the temporaries of :class:`model.autoencoder.Decoder` decoding one image.

    Walks ``Decoder.forward`` as written: each ResBlock holds its input while ``norm1 -> conv1 ->
    norm2 -> conv2`` run (activations in place; on CUDA ``sigmoid`` makes a full-size temporary and
    autocast a bf16 copy of each conv input), each adaptive norm holds its input and its output,
    each upsampler its 4C convolution and the depth-to-space copy. Images are decoded one at a time,
    so this does not depend on the batch.
    """
    patch = ae.patch_size
    area = (height // patch) * (width // patch)
    live = _Live()
    tokens = live.add(ae.z_channels * area * rules.compute)
    widths = {"x": rules.compute}  # dtype of the running map

    def conv_input(channels: int, dtype: int) -> int:  # autocast's cast of a float32 conv input
        return live.add(channels * area * rules.compute) if rules.autocast and dtype != rules.compute else 0

    def activation(channels: int, dtype: int) -> None:  # swish_ in place; CUDA's sigmoid temporary
        if rules.sigmoid_temporary:
            live.free(live.add(channels * area * dtype))

    def res_block(x: int, c_in: int, c_out: int) -> int:
        n1 = live.add(c_in * area * rules.norm)
        activation(c_in, rules.norm)
        cast = conv_input(c_in, rules.norm)
        h1 = live.add(c_out * area * rules.compute)
        live.free(n1, cast)
        n2 = live.add(c_out * area * rules.norm)
        activation(c_out, rules.norm)
        cast = conv_input(c_out, rules.norm)
        h2 = live.add(c_out * area * rules.compute)
        live.free(h1, n2, cast)
        if c_in != c_out:
            cast = conv_input(c_in, widths["x"])
            live.free(live.add(c_out * area * rules.compute), cast)  # nin_shortcut, added in place
        widths["x"] = rules.compute
        live.free(x)
        return h2

    channels = ae.ch * ae.ch_mult[-1]
    x = live.add(channels * area * rules.compute)  # conv_in
    for _ in range(ae.num_res_blocks):
        x = res_block(x, channels, channels)
    for level in reversed(range(len(ae.ch_mult))):
        normed = live.add(channels * area * rules.norm)  # adaptive group norm, scaled in place
        live.free(x)
        x, widths["x"] = normed, rules.norm
        out = ae.ch * ae.ch_mult[level]
        for _ in range(ae.num_res_blocks):
            x = res_block(x, channels, out)
            channels = out
        if level > 0:
            cast = conv_input(channels, widths["x"])
            conv = live.add(4 * channels * area * rules.compute)
            live.free(cast)
            area *= 4
            shuffled = live.add(channels * area * rules.compute)  # depth_to_space copies
            live.free(conv, x)
            x = shuffled
    normed = live.add(channels * area * rules.norm)
    activation(channels, rules.norm)
    cast = conv_input(channels, rules.norm)
    live.add(ae.out_ch * area * rules.compute)
    live.free(normed, cast, x, tokens)
    return live.peak


@dataclass(frozen=True)
class BatchPlan:
    """Memory of one generation; ``--json`` prints these fields."""

    batch: int
    height: int
    width: int
    guidance: bool
    kv_cache_bytes: int
    activation_bytes: int
    peak_bytes: int


def sampling_bytes(configs: CheckpointConfigs, generation: Generation, rules: DeviceRules) -> int:
    """Peak temporaries of the sampling stages of ``generate_batch`` besides the weights and the KV cache.

    Kept throughout: the position embedding of every image token (float32), the sampled patches,
    the fed block and the LLM's hidden states of the current block. On top, the largest of the
    prefill (its input embeddings and one layer over the prompt and prefix), an LLM step and the
    diffusion head.
    """
    hidden = configs.llm.hidden_size
    parallel_num = configs.head.parallel_num
    tokens = image_tokens(configs, generation.height, generation.width)
    rows = generation.rows
    prefill_tokens = cache_capacity(configs, generation) - tokens  # prompt, <|vision_start|>, <|res_H|>
    kept = tokens * hidden * FLOAT32 + generation.images * tokens * configs.head.ch_target * FLOAT32
    kept += 2 * rows * parallel_num * hidden * rules.stream
    prefill = rows * prefill_tokens * hidden * rules.stream + llm_block_bytes(configs, rows, prefill_tokens, rules)
    step = llm_block_bytes(configs, rows, parallel_num, rules)
    return kept + max(prefill, step, head_bytes(configs, rows, rules))


def decoding_bytes(configs: CheckpointConfigs, generation: Generation, rules: DeviceRules) -> int:
    """Peak temporaries while decoding: the sampled tokens, the finished images and one decoder pass."""
    tokens = image_tokens(configs, generation.height, generation.width)
    kept = generation.images * tokens * configs.head.ch_target * FLOAT32
    kept += generation.images * generation.height * generation.width * 3  # uint8 pixels
    return kept + decoder_bytes(configs.autoencoder, generation.height, generation.width, rules)


def plan_generation(
    configs: CheckpointConfigs, generation: Generation, rules: DeviceRules, weights: int, dequantization: int = 0
) -> BatchPlan:
    """``dequantization``: the fp8 weight cast to the compute dtype during a forward of the sampling stages."""
    kv = kv_cache_bytes(configs, generation, rules)
    sampling = sampling_bytes(configs, generation, rules) + dequantization
    decoding = decoding_bytes(configs, generation, rules)
    return BatchPlan(
        batch=generation.images,
        height=generation.height,
        width=generation.width,
        guidance=generation.guidance,
        kv_cache_bytes=kv,
        activation_bytes=max(sampling, decoding),
        peak_bytes=weights + max(kv + sampling, decoding),
    )


@dataclass(frozen=True)
class MemoryPlan:
    """Parameters and bytes per loaded module (and ``total``), and each generation's memory."""

    parameters: dict[str, int]
    bytes: dict[str, int]
    batches: list[BatchPlan]
    unloaded: dict[str, int] = field(default_factory=dict)  # in the files, never loaded: lm_head, encoder
    rules: DeviceRules | None = None  # what the bytes were counted with
    dequantization_bytes: int = 0  # fp8: the largest quantised weight in the compute dtype, counted in the peak

    def as_json(self) -> dict:
        return {"parameters": self.parameters, "bytes": self.bytes, "batches": [asdict(b) for b in self.batches]}

    def worst(self, batch: int) -> BatchPlan:
        """The generation of ``batch`` images with the highest peak (guided, at the largest size)."""
        candidates = [b for b in self.batches if b.batch == batch]
        if not candidates:
            raise ValueError(f"batch {batch} is not in this plan")
        return max(candidates, key=lambda b: b.peak_bytes)


def loaded_weight_bytes(modules: MetaModules, component: str, rules: DeviceRules) -> int:
    """Bytes of the weights of ``component`` as loaded: ``rules.weight`` each, fp8 linears 1 + their scales."""
    total = modules.loaded_parameters(component) * rules.weight
    if rules.quantization == "fp8":
        for linear in quantized_linears(component, modules.loaded(component)[0]).values():
            total -= linear.weight.numel() * (rules.weight - 1)
            total += linear.out_features * FLOAT32
    return total


def dequantization_bytes(modules: MetaModules, rules: DeviceRules) -> int:
    """fp8: the largest quantised weight cast to the compute dtype, alive during its layer's forward."""
    if rules.quantization != "fp8":
        return 0
    sizes = [
        linear.weight.numel()
        for component in COMPONENTS
        for linear in quantized_linears(component, modules.loaded(component)[0]).values()
    ]
    return max(sizes, default=0) * rules.compute


def build_plan(
    configs: CheckpointConfigs,
    device: str = "cuda",
    batches: Sequence[int] = BATCHES,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
) -> MemoryPlan:
    """The plan of ``configs`` on ``device`` with ``dtype`` weights (default: the pipeline's) and ``quantization``."""
    rules = DeviceRules.for_device(device, dtype, quantization)
    modules = MetaModules.build(configs)
    parameters = {name: modules.loaded_parameters(name) for name in COMPONENTS}
    parameters["total"] = sum(parameters.values())
    weight_bytes = {name: loaded_weight_bytes(modules, name, rules) for name in COMPONENTS}
    weight_bytes["total"] = sum(weight_bytes.values())
    dequantization = dequantization_bytes(modules, rules)
    plans = [
        plan_generation(
            configs, Generation(batch, guidance, h, w, prompt_tokens), rules, weight_bytes["total"], dequantization
        )
        for h, w in supported_sizes(configs.head.parallel_num)
        for batch in batches
        for guidance in (True, False)
    ]
    return MemoryPlan(parameters, weight_bytes, plans, modules.unloaded_parameters(), rules, dequantization)


# ---------------------------------------------------------------------------------------------
# What a batch may need


@dataclass(frozen=True)
class BatchMemoryLimit:
    """Which generations a worker may run as one batch: none needing more memory than the start-up check
    found room for, ``max_batch_images`` guided images of ordinary prompts
    (:data:`DEFAULT_PROMPT_TOKENS`) at the largest supported size.

    A batch's prompts are left-padded to its longest, so its KV cache and prefill grow with that
    one prompt for every row: at 10,000 tokens four guided 1024x1024 images of the 14B checkpoint
    peak at 64.3 GiB against 35.7 GiB with ordinary prompts. The worker's batching
    (``worker.batching``) asks :meth:`fits` before a queued request joins, so a long prompt runs
    with few companions or alone, and never makes its companions' generation run out of memory.
    The comparison leaves the weights out (the same on both sides).
    """

    configs: CheckpointConfigs
    rules: DeviceRules
    limit_bytes: int
    count_tokens: Callable[[str], int]  # a prompt's conditional row, chat template included

    @classmethod
    def for_worker(
        cls, configs: CheckpointConfigs, device: str, max_batch_images: int, count_tokens: Callable[[str], int]
    ) -> BatchMemoryLimit:
        rules = DeviceRules.for_device(device)
        limit = max(
            _activation_peak(configs, Generation(max_batch_images, True, height, width), rules)
            for height, width in supported_sizes(configs.head.parallel_num)
        )
        return cls(configs, rules, limit, count_tokens)

    def prompt_tokens(self, prompt: str) -> int:
        return self.count_tokens(prompt)

    def fits(self, images: int, guided: bool, height: int, width: int, prompt_tokens: int) -> bool:
        """Whether ``images`` images of this size, guided or not, with their longest prompt of
        ``prompt_tokens`` tokens, need no more than the limit."""
        generation = Generation(images, guided, height, width, max(prompt_tokens, 1))
        return _activation_peak(self.configs, generation, self.rules) <= self.limit_bytes


def _activation_peak(configs: CheckpointConfigs, generation: Generation, rules: DeviceRules) -> int:
    """A generation's peak without the weights."""
    return plan_generation(configs, generation, rules, weights=0).peak_bytes


# ---------------------------------------------------------------------------------------------
# The worker's start-up check


def memory_refusal(
    plan: MemoryPlan, max_batch_images: int, free_bytes: int, device: str, fp8_plan: MemoryPlan | None = None
) -> str | None:
    """``None`` when ``max_batch_images`` fits in ``free_bytes`` (with the CUDA reserve), else why not.

    The message names what is needed, what is free and what to change: the largest batch that
    fits, or that not even one image does; with ``fp8_plan`` (the same checkpoint quantised, for a
    plan that is not) also what fits with ``BITDANCE_QUANTIZATION=fp8``.
    """
    needed = plan.worst(max_batch_images).peak_bytes + CUDA_RESERVE_BYTES
    if needed <= free_bytes:
        return None
    worst = plan.worst(max_batch_images)
    parts = (
        f"weights {plan.bytes['total'] / GIB:.1f} GiB, KV cache {worst.kv_cache_bytes / GIB:.1f} GiB, "
        f"activations {worst.activation_bytes / GIB:.1f} GiB, reserve {CUDA_RESERVE_BYTES / GIB:.1f} GiB"
    )
    weights = f" with weights in {plan.rules.describe()}" if plan.rules is not None else ""
    fitting = largest_fitting_batch(plan, max_batch_images - 1, free_bytes)
    fp8_fitting = largest_fitting_batch(fp8_plan, max_batch_images, free_bytes) if fp8_plan is not None else 0
    if fp8_plan is not None and fp8_fitting:
        fp8_needed = (fp8_plan.worst(fp8_fitting).peak_bytes + CUDA_RESERVE_BYTES) / GIB
        fp8_advice = (
            f"set BITDANCE_QUANTIZATION=fp8 (fp8 weights {fp8_plan.bytes['total'] / GIB:.1f} GiB: "
            f"BITDANCE_MAX_BATCH_IMAGES={fp8_fitting} fits, needing {fp8_needed:.1f} GiB)"
        )
        advice = f"{fp8_advice}, or set BITDANCE_MAX_BATCH_IMAGES={fitting} or lower" if fitting else fp8_advice
        if not fitting:
            advice = f"not even one image fits without quantization: {advice}"
    elif fitting:
        advice = f"set BITDANCE_MAX_BATCH_IMAGES={fitting} or lower, or use a GPU with more free memory"
    else:
        advice = "not even one image fits: free this GPU (other processes hold memory) or use a larger one"
    return (
        f"not enough GPU memory on {device} for BITDANCE_MAX_BATCH_IMAGES={max_batch_images}{weights}: "
        f"needs {needed / GIB:.1f} GiB ({parts}) at {worst.width}x{worst.height} with guidance, "
        f"{free_bytes / GIB:.1f} GiB free; {advice}"
    )


def largest_fitting_batch(plan: MemoryPlan, at_most: int, free_bytes: int) -> int:
    """The largest batch up to ``at_most`` whose worst generation fits in ``free_bytes`` with the reserve; 0 if none."""
    return next((b for b in range(at_most, 0, -1) if _fits(plan, b, free_bytes)), 0)


def _fits(plan: MemoryPlan, batch: int, free_bytes: int) -> bool:
    candidates = [b for b in plan.batches if b.batch == batch]
    if not candidates:
        return False
    return max(b.peak_bytes for b in candidates) + CUDA_RESERVE_BYTES <= free_bytes


def check_device_memory(
    configs: CheckpointConfigs,
    device: str,
    max_batch_images: int,
    quantization: str | None = None,
    free_bytes: int | None = None,
) -> str | None:
    """The worker's start-up check on ``device``: ``None`` when it fits, else the refusal.

    ``free_bytes``: the device's free memory; by default asked from CUDA (and no check off CUDA).
    Without quantization a refusal also says what ``fp8`` would fit.
    """
    if free_bytes is None:
        if torch.device(device).type != "cuda":
            return None
        free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
    batches = range(1, max_batch_images + 1)
    plan = build_plan(configs, device, batches=batches, quantization=quantization)
    if largest_fitting_batch(plan, max_batch_images, free_bytes) == max_batch_images:
        return None
    fp8_plan = (
        None if plan.rules and plan.rules.quantization else build_plan(configs, device, batches, quantization="fp8")
    )
    return memory_refusal(plan, max_batch_images, free_bytes, device, fp8_plan)
