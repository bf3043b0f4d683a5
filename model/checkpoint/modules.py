"""The modules a checkpoint's configs imply, built on the meta device: the one place they are built so.

:class:`MetaModules` holds every module a checkpoint's files hold (the Qwen3 body, the whole
autoencoder, the diffusion head, the projector) without memory. From it come the tensor names and
shapes each file must have (verification and loading check them), the parameter counts of the
memory plan, and, once the loaded parts have real tensors (read from the files, or drawn at random
by the benchmark), the :class:`LoadedModules` the pipeline runs. ``lm_head`` and the autoencoder's
encoder are in the files and checked, never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.autoencoder import AutoencoderConfig, BinaryAutoencoder, Decoder
from model.checkpoint.configs import CheckpointConfigs
from model.checkpoint.layout import COMPONENTS
from model.checkpoint.rope import check_rotary_embedding, head_dim_of
from model.head import DiffusionHead
from model.llm import build_llm
from model.projector import TokenProjector

if TYPE_CHECKING:
    from model.checkpoint.loading import LoadStats

LM_HEAD = "lm_head.weight"


@dataclass
class LoadedModules:
    """The modules inference runs, with real tensors on their device, and what loading them took."""

    llm_config: Qwen3Config
    llm: Qwen3Model
    autoencoder: Decoder  # the autoencoder's decoder: inference never runs its encoder
    autoencoder_config: AutoencoderConfig
    head: DiffusionHead
    projector: TokenProjector
    stats: LoadStats | None = None


@dataclass
class MetaModules:
    """Every module of a checkpoint built on the meta device: the shapes its files must have."""

    configs: CheckpointConfigs
    llm: Qwen3Model
    autoencoder: BinaryAutoencoder
    head: DiffusionHead
    projector: TokenProjector

    @classmethod
    def build(cls, configs: CheckpointConfigs, dtype: torch.dtype | None = None) -> MetaModules:
        """The modules of ``configs`` with no memory; ``dtype`` (default float32) is their parameters'."""
        default = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device("meta"):
                return cls(
                    configs=configs,
                    llm=build_llm(configs.llm),
                    autoencoder=BinaryAutoencoder(configs.autoencoder),
                    head=DiffusionHead(configs.head),
                    projector=TokenProjector(configs.projector.in_dim, configs.projector.out_dim),
                )
        finally:
            torch.set_default_dtype(default)

    def held(self, component: str) -> tuple[nn.Module, str]:
        """The module a component's file holds, and the prefix of its keys there (``lm_head`` aside)."""
        return {
            "llm": (self.llm, "model."),
            "autoencoder": (self.autoencoder, ""),
            "head": (self.head, ""),
            "projector": (self.projector, ""),
        }[component]

    def loaded(self, component: str) -> tuple[nn.Module, str]:
        """The part of a component inference uses, and the prefix of its keys in the file."""
        if component == "autoencoder":
            return self.autoencoder.decoder, "decoder."
        return self.held(component)

    def expected_shapes(self, component: str) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, as the component's safetensors must hold them."""
        module, prefix = self.held(component)
        shapes = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
        if component == "llm":
            shapes[LM_HEAD] = (self.configs.llm.vocab_size, self.configs.llm.hidden_size)
        return shapes

    def loaded_parameters(self, component: str) -> int:
        """Parameters of the part of ``component`` inference loads."""
        return sum(p.numel() for p in self.loaded(component)[0].parameters())

    def unloaded_parameters(self) -> dict[str, int]:
        """Parameters the checkpoint holds that inference never loads: ``lm_head`` and the encoder."""
        llm = self.configs.llm
        return {
            "lm_head": llm.vocab_size * llm.hidden_size,
            "encoder": sum(p.numel() for p in self.autoencoder.encoder.parameters()),
        }

    def finish(self, device: torch.device, stats: LoadStats | None = None) -> LoadedModules:
        """The loaded parts, once every tensor of theirs is real, ready for inference on ``device``."""
        for name in COMPONENTS:
            self.loaded(name)[0].eval().requires_grad_(False)
        configs = self.configs
        with torch.device(device):  # its inv_freq is a non-persistent buffer, built on the device
            self.llm.rotary_emb = Qwen3RotaryEmbedding(config=configs.llm)
        check_rotary_embedding(self.llm.rotary_emb, configs.rope, head_dim_of(configs.llm), configs.llm_config_name)
        return LoadedModules(
            configs.llm, self.llm, self.autoencoder.decoder, configs.autoencoder, self.head, self.projector, stats
        )
