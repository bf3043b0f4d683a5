"""BitDance text-to-image inference: prompt -> LLM -> next-patch diffusion -> binary tokens -> pixels.

``BitDancePipeline.generate_batch`` is the recipe, as numbered steps; the sampling math lives in
``model.sampler``, the networks in ``model.llm`` / ``model.head`` / ``model.autoencoder``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from model.autoencoder import to_uint8_pixels
from model.checkpoint.configs import CheckpointConfigs, read_configs
from model.checkpoint.layout import identify_checkpoint
from model.checkpoint.loading import LoadStats, load_modules
from model.checkpoint.modules import LoadedModules
from model.exceptions import GenerationCancelled
from model.generation_request import GenerationRequest
from model.interface import ModelIdentity, PipelineOutput, ProgressCallback, StopCheck
from model.llm import PatchDecoder
from model.positions import grid_from_tokens, patch_major_embedding, sincos_table
from model.precision import autocast, default_dtype
from model.prompts import PromptEncoder, image_prefix_tokens
from model.quantization import check_quantization
from model.resolutions import check_supported_size, supported_sizes
from model.sampler import GuidanceLayout, NoiseSource, SamplerSchedule, SamplerStep, euler_maruyama, uses_guidance
from model.seeds import check_seed, resolve_seed

__all__ = ["BitDancePipeline", "BitDancePipelineOutput", "GenerationRequest", "StageTimes"]

Stage = Literal["llm", "head", "decoder"]


@dataclass
class StageTimes:
    """Seconds spent per stage of one generation."""

    llm: float = 0.0
    head: float = 0.0
    decoder: float = 0.0


@dataclass
class BitDancePipelineOutput(PipelineOutput):
    """What ``generate_batch`` returns: each request's images (``images``, in request order) and more."""

    timings: StageTimes
    tokens: torch.Tensor | None = None  # (images, N, 32) in decoding order, values in {-1, +1}; when asked for


class StageTimer:
    """Adds the wall time of each ``with timer.stage(name):`` block to ``timer.times``.

    With ``synchronize`` on a CUDA device it waits for the device at both ends of a stage, so the
    times are the device's (slower: meant for profiling, e.g. ``bench.model_speed``).
    """

    def __init__(self, device: torch.device, synchronize: bool = False) -> None:
        self.times = StageTimes()
        self._sync_device = device if synchronize and device.type == "cuda" else None

    @contextlib.contextmanager
    def stage(self, name: Stage) -> Iterator[None]:
        started = self._now()
        try:
            yield
        finally:
            setattr(self.times, name, getattr(self.times, name) + self._now() - started)

    def _now(self) -> float:
        if self._sync_device is not None:
            torch.cuda.synchronize(self._sync_device)
        return time.perf_counter()


class BitDancePipeline:
    """A loaded BitDance checkpoint. Load once with :meth:`from_pretrained`, then call :meth:`generate`.

    Implements :class:`model.interface.Pipeline`, what a worker serves.
    """

    def __init__(self, modules: LoadedModules, prompts: PromptEncoder, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.quantization: str | None = None  # "fp8" when from_pretrained quantised the weights
        self.prompts = prompts
        self.llm_config = modules.llm_config
        self.llm = modules.llm
        self.head = modules.head
        self.projector = modules.projector
        self.autoencoder = modules.autoencoder  # its decoder: tokens -> pixels
        self.patch_decoder = PatchDecoder(modules.llm)
        self.parallel_num = modules.head.config.parallel_num
        self.patch = int(round(self.parallel_num**0.5))
        self.token_size = modules.autoencoder_config.patch_size
        self.token_bits = modules.autoencoder_config.z_channels
        self.position_table = sincos_table(self.llm_config.hidden_size // 2).to(device)
        self.load_stats: LoadStats | None = modules.stats
        # What the worker reports in /health; from_pretrained names the checkpoint.
        self.identity = ModelIdentity("unnamed", "", f"custom-{self.parallel_num}x", self.parallel_num)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        quantization: str | None = None,
    ) -> BitDancePipeline:
        """Load a checkpoint directory, native or diffusers layout (nothing is fetched from a hub).

        Args:
            path: a checkpoint in the native BitDance layout (``config.json``, ``model.safetensors``,
                the tokenizer files, ``ae_config.json`` + ``ae.safetensors``, ``vision_head_config.json``
                + ``vision_head.safetensors``, ``projector.safetensors``) or in the diffusers layout
                (``model_index.json`` and the ``text_encoder/``, ``tokenizer/``, ``autoencoder/``,
                ``diffusion_head/``, ``projector/`` folders); weights single-file or sharded. The
                layout is told from the folder itself.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            dtype: weight dtype; default bfloat16 on CUDA and float32 on the CPU. CUDA always runs
                under bf16 autocast (as upstream); bfloat16 on the CPU runs under CPU autocast with
                the same arithmetic (norms and softmax in float32: ``model.precision``).
            quantization: ``None`` (or ``"none"``): every weight in ``dtype``. ``"fp8"``: the linear
                layers of the LLM and the diffusion head in fp8 e4m3 with per-output-channel scales,
                quantised at load (or taken as stored from a pre-quantised checkpoint) and computed in
                ``dtype`` (``model.quantization``); about half the weight memory. Any other value is
                a ``ValueError`` naming it.
        """
        quantization = check_quantization(quantization)  # before any file is read
        return cls.from_configs(read_configs(path), device, dtype, quantization=quantization)

    @classmethod
    def from_configs(
        cls,
        configs: CheckpointConfigs,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        quantization: str | None = None,
    ) -> BitDancePipeline:
        """:meth:`from_pretrained` from configs already read (a worker reads them once, to verify and plan too)."""
        quantization = check_quantization(quantization)
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        prompts = PromptEncoder.from_directory(configs.files.tokenizer_dir)
        pipe = cls(load_modules(configs, device, dtype, quantization), prompts, device, dtype)
        pipe.quantization = quantization
        llm = pipe.llm_config
        root = configs.files.root
        pipe.identity = identify_checkpoint(root, pipe.parallel_num, llm.hidden_size, llm.num_hidden_layers)
        return pipe

    def supported_sizes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` sizes this checkpoint generates."""
        return supported_sizes(self.parallel_num)

    def generate(
        self,
        prompt: str,
        height: int,
        width: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        num_images: int = 1,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> list[Image.Image]:
        """Generate ``num_images`` images for one prompt (``generate_batch`` with one request).

        Args:
            prompt: the text prompt.
            height, width: output size in pixels; one of :meth:`supported_sizes` (else ``ValueError``).
            num_inference_steps: Euler–Maruyama sampling steps of the diffusion head, run for every patch.
            guidance_scale: classifier-free guidance scale; guidance is off at or below 1.
            seed: seeds this request's own ``torch.Generator``; ``None`` draws a random seed.
                With the same weights the images equal the official pipeline's for that seed.
            num_images: images generated for the prompt.
            progress: ``progress(patch, num_patches)`` after each decoding step (one patch of
                ``parallel_num`` tokens, ``num_inference_steps`` sampling steps each); decoding to
                pixels follows the last one.
            should_stop: checked before each decoding step; ``True`` raises :class:`GenerationCancelled`.
        """
        request = GenerationRequest(prompt, seed, guidance_scale, num_images)
        output = self.generate_batch(
            [request],
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            progress=progress,
            should_stop=should_stop,
        )
        return output.images[0]

    @torch.inference_mode()
    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        height: int,
        width: int,
        num_inference_steps: int = 25,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        return_tokens: bool = False,
        decode: bool = True,
        profile: bool = False,
    ) -> BitDancePipelineOutput:
        """Generate several requests of one size and step count in one pass through the LLM and the head.

        Each request keeps its own prompt, seed, guidance scale and image count, and gets exactly
        the images it would get alone.

        Args:
            requests: the prompts with their seeds, guidance scales and image counts.
            height, width: output size in pixels; one of :meth:`supported_sizes` (else ``ValueError``).
            num_inference_steps: Euler–Maruyama steps of the diffusion head per patch.
            progress: ``progress(patch, num_patches)`` after each decoded patch.
            should_stop: checked before each patch; ``True`` raises :class:`GenerationCancelled`.
            return_tokens: also return the binary tokens (``output.tokens``).
            decode: ``False`` stops before step 5: no images, only the tokens (e.g. to measure sampling).
            profile: synchronize a CUDA device around each stage, so ``output.timings`` are exact.

        Returns:
            :class:`BitDancePipelineOutput`: the images of each request in order, the seconds per
            stage and, when asked, the tokens.
        """
        # 1. Check inputs
        self.check_inputs(requests, height, width, num_inference_steps)
        timer = StageTimer(self.device, synchronize=profile)
        grid_h, grid_w = height // self.token_size, width // self.token_size
        num_patches = grid_h * grid_w // self.parallel_num

        # 2. Prepare sampling: rows per request and branch, each request's noise, positions, time schedule
        layout = GuidanceLayout.build(
            [r.num_images for r in requests], [r.guidance_scale for r in requests], self.device
        )
        noise = self.prepare_noise(requests, layout)
        positions = patch_major_embedding(self.position_table, grid_h, grid_w, self.patch)
        schedule = SamplerSchedule.build(num_inference_steps, self.head.config.time_shift, device=self.device)

        patches = []
        with self._autocast():
            time_features = self._time_features(schedule, layout)
            # 3. Encode the prompts (cond, then uncond when guided, per request) and prefill the LLM
            #    with them and the image prefix
            with timer.stage("llm"):
                hidden, state = self._prefill(requests, grid_h, grid_w, num_patches)
            # 4. Decode the image patch by patch
            for patch in range(num_patches):
                if should_stop is not None and should_stop():
                    raise GenerationCancelled(f"stopped before patch {patch + 1} of {num_patches}")
                position = positions[patch * self.parallel_num : (patch + 1) * self.parallel_num]
                with timer.stage("head"):
                    # 4a. Condition: the LLM's hidden state at this patch's positions
                    condition = hidden + position
                    # 4b. Sample the patch with the diffusion head
                    sample = self._sample_patch(condition, layout, noise, schedule, time_features)
                    # 4c. Binarize
                    patch_tokens = torch.sign(sample)
                    patches.append(patch_tokens)
                # 4d. Feed the patch back (skipped after the last one: its output would be unused)
                if patch + 1 < num_patches:
                    with timer.stage("llm"):
                        rows = patch_tokens.index_select(0, layout.expand_index)
                        fed = self.projector(rows) + position
                        hidden = self.patch_decoder.step(fed, state)
                if progress is not None:
                    progress(patch + 1, num_patches)
        tokens = torch.cat(patches, dim=1)
        if not decode:
            return BitDancePipelineOutput([[] for _ in requests], timer.times, tokens)

        # 5. Decode the token grids to pixels, one image at a time (batch-independent results)
        with timer.stage("decoder"):
            pixels = [self.decode(tokens[i : i + 1], height, width) for i in range(tokens.shape[0])]
        images = [Image.fromarray(p[0].numpy()) for p in pixels]

        # 6. Hand each request its own images
        per_request, start = [], 0
        for request in requests:
            per_request.append(images[start : start + request.num_images])
            start += request.num_images
        return BitDancePipelineOutput(per_request, timer.times, tokens if return_tokens else None)

    def check_inputs(
        self, requests: Sequence[GenerationRequest], height: int, width: int, num_inference_steps: int
    ) -> None:
        if not requests:
            raise ValueError("at least one request is needed")
        check_supported_size(height, width, self.parallel_num)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        for request in requests:
            if not isinstance(request.prompt, str):
                raise ValueError(f"prompt must be a string, got {type(request.prompt).__name__}")
            if not isinstance(request.num_images, int) or request.num_images < 1:
                raise ValueError(f"num_images must be a positive integer, got {request.num_images!r}")
            check_seed(request.seed)

    def prepare_noise(self, requests: Sequence[GenerationRequest], layout: GuidanceLayout) -> NoiseSource:
        """Each request's own generator, on the pipeline's device (as upstream draws from that device's
        default generator after seeding: CPU draws on the CPU, CUDA draws on the GPU)."""
        generators = [torch.Generator(device=self.device).manual_seed(resolve_seed(r.seed)) for r in requests]
        return NoiseSource(generators, layout.images_per_request, (self.parallel_num, self.token_bits), self.device)

    def _prefill(self, requests: Sequence[GenerationRequest], grid_h: int, grid_w: int, num_blocks: int):
        prefix = self.prompts.special_ids(image_prefix_tokens(grid_h, grid_w, self.parallel_num))
        rows: list[list[int]] = []
        for request in requests:
            branches = [self.prompts.conditional_ids(request.prompt)]
            if uses_guidance(request.guidance_scale):
                branches.append(self.prompts.unconditional_ids())
            for prompt_ids in branches:
                rows.extend([prompt_ids + prefix] * request.num_images)
        length = max(len(r) for r in rows)
        padding = [length - len(r) for r in rows]
        padded = [[0] * pad + r for pad, r in zip(padding, rows, strict=True)]
        ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        return self.patch_decoder.prefill(self.patch_decoder.embed(ids), padding, self.parallel_num, num_blocks)

    def _time_features(self, schedule: SamplerSchedule, layout: GuidanceLayout) -> list[torch.Tensor]:
        """The head's time embedding ``(rows, 1, C)`` for each evaluation of a patch, computed once.

        Each request's embedding is computed over that request's own rows, the shape the official
        sampler uses, so a request's numbers never depend on its batch.
        """
        sizes = layout.rows_per_request()
        features = []
        for step in schedule.evaluations:
            by_size = {n: self.head.net.time_embed(step.t.expand(n)) for n in set(sizes)}
            features.append(torch.cat([by_size[n] for n in sizes]).unsqueeze(1))
        return features

    def _sample_patch(
        self,
        condition: torch.Tensor,
        layout: GuidanceLayout,
        noise: NoiseSource,
        schedule: SamplerSchedule,
        time_features: list[torch.Tensor],
    ) -> torch.Tensor:
        """Run the head's sampler on ``condition (rows, P, hidden)``; returns ``(images, P, 32)``."""
        net = self.head.net
        cond_features = net.cond_embed(condition)

        def denoise(x: torch.Tensor, step: SamplerStep) -> torch.Tensor:
            return net.denoise(x, time_features[step.index], cond_features)

        return euler_maruyama(denoise, layout, noise, schedule)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, N, 32)`` tokens in decoding order -> ``(B, H, W, 3)`` uint8 pixels."""
        grid = grid_from_tokens(tokens, height // self.token_size, width // self.token_size, self.patch)
        with self._autocast():
            return to_uint8_pixels(self.autoencoder(grid.to(self.dtype)))

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast on CUDA and for bf16 weights on the CPU: the GPU's arithmetic (``model.precision``)."""
        return autocast(self.device, self.dtype)
