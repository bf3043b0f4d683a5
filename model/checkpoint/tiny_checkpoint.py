"""Tiny random BitDance checkpoints, written in either layout (``python -m model.tiny`` is the command).

The weights are random from a fixed seed (:mod:`model.checkpoint.random_weights`' rule, every layer
non-zero), the tokenizer is a byte-level BPE trained here on generated English plus the Qwen and
BitDance special tokens, and the shapes are small enough for a 1024x1024 image in a few seconds on
two CPU cores. This is the embedded default that ``make run`` serves and what the tests use. The
files go where :func:`model.checkpoint.layout.layout_files` says the loader looks for them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast, Qwen3Config  # type: ignore[attr-defined,unused-ignore]

from model.autoencoder import AutoencoderConfig, BinaryAutoencoder
from model.checkpoint.configs import PROJECTOR_ACTIVATION
from model.checkpoint.layout import (
    DIFFUSERS_COMPONENTS,
    GENERATION_CONFIG,
    PIPELINE_CLASS,
    TINY_MARKER,
    TOKENIZER_CLASS,
    TOKENIZER_FOLDER,
    CheckpointFiles,
    ComponentFiles,
    Layout,
    layout_files,
)
from model.checkpoint.random_weights import fill_random_, random_tensor
from model.checkpoint.rope import read_rope, with_transformers4_rope
from model.checkpoint.tensor_files import write_safetensors
from model.head import DiffusionHead, HeadConfig
from model.llm import build_llm
from model.positions import MAX_GRID_POSITIONS
from model.projector import TokenProjector
from model.resolutions import supported_sizes

SEED = 20260214
BPE_VOCAB = 1000
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORDS = (
    "a an the of and in on with at by from under over near beside behind above "
    "cat dog horse bird fish fox owl bear lion tiger robot astronaut knight wizard girl boy woman man "
    "city street forest mountain river lake ocean beach desert garden castle house room window door "
    "red blue green yellow orange purple black white golden silver pink brown gray "
    "small large tiny huge old young bright dark soft sharp warm cold calm wild quiet "
    "sunset sunrise night morning rain snow fog light shadow sky cloud star moon sun "
    "painting photo portrait sketch illustration render cinematic detailed realistic "
    "sitting standing running flying walking reading holding wearing looking playing "
    "hat coat dress book cup flower tree boat car train bicycle lamp table chair"
).split()


SYLLABLES = "ka lo mi ne ru sa ti vo ze bra cle dri fla gro pli sto tra wen xor yul qua".split()


def training_text(lines: int = 6000, seed: int = SEED) -> list[str]:
    """English-like sentences: common words mixed with made-up ones, so BPE learns 1000 tokens."""
    rng = random.Random(seed)
    invented = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(3000)]
    text = []
    for _ in range(lines):
        words = [rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(invented) for _ in range(rng.randint(4, 16))]
        sentence = " ".join(words).capitalize() + rng.choice([".", ",", "!", "?", "."])
        text.append(sentence + (f" {rng.randint(0, 2026)}" if rng.random() < 0.2 else ""))
    return text


def build_tokenizer(parallel_num: int) -> Qwen2TokenizerFast:
    """Byte-level BPE (Qwen2 split regex, NFC) of 1000 tokens + Qwen specials + res/query tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(training_text(), trainer=trainer)
    if bpe.get_vocab_size() != BPE_VOCAB:
        raise RuntimeError(f"BPE training gave {bpe.get_vocab_size()} tokens, expected {BPE_VOCAB}")
    bpe.add_special_tokens(list(QWEN_SPECIAL_TOKENS))  # ids 1000.. in Qwen's order
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    if tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS[0]) != BPE_VOCAB:
        raise RuntimeError("Qwen special tokens did not land right after the BPE vocabulary")
    extra = [f"<|res_{i}|>" for i in range(1, MAX_GRID_POSITIONS + 1)]
    extra += [f"<|query_{i}|>" for i in range(1, parallel_num)]
    tokenizer.add_tokens(extra, special_tokens=True)  # the same in transformers 4 and 5
    return tokenizer


def special_tokens_map(additional: list[str]) -> dict:
    """``special_tokens_map.json`` as a Qwen tokenizer with BitDance's added tokens has it."""

    def entry(token: str) -> dict:
        return {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {
        "additional_special_tokens": [entry(t) for t in additional],
        "eos_token": entry("<|im_end|>"),
        "pad_token": entry("<|endoftext|>"),
    }


def tiny_llm_config(vocab_size: int, hidden: int, layers: int) -> Qwen3Config:
    heads = max(2, hidden // 16)
    # Passed as a dict: transformers 5 takes the Qwen3-14B-style rope_theta / rope_scaling keys too
    # (it folds them into rope_parameters), but its signature no longer names them.
    values: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden // heads,
        hidden_act="silu",
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=layers,
        bos_token_id=1000,
        eos_token_id=1002,
        use_cache=True,
        initializer_range=0.02,
    )
    return Qwen3Config(**values)


LAYOUTS = tuple(layout.value for layout in Layout)
# What the diffusers port's save_pretrained records (diffusers' own version field is bookkeeping).
DIFFUSERS_VERSION = "0.39.0"


@dataclass
class TinyParts:
    """Everything a checkpoint holds, independent of the folder layout it is written in."""

    tokenizer: Qwen2TokenizerFast
    llm_config: Qwen3Config
    llm: dict[str, torch.Tensor]
    autoencoder_config: dict
    autoencoder: dict[str, torch.Tensor]
    head_config: dict
    head: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor]

    def configs(self) -> dict[str, dict]:
        """Component -> the contents of its config file (the projector's exists in the diffusers layout only)."""
        projector = {
            "hidden_act": PROJECTOR_ACTIVATION,
            "in_dim": self.autoencoder_config["ddconfig"]["z_channels"],
            "out_dim": self.llm_config.hidden_size,
        }
        return {"autoencoder": self.autoencoder_config, "head": self.head_config, "projector": projector}

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"llm": self.llm, "autoencoder": self.autoencoder, "head": self.head, "projector": self.projector}


def build_parts(parallel_num: int = 64, hidden: int = 64, layers: int = 2, head_channels: int = 128,
                head_depth: int = 2) -> TinyParts:  # fmt: skip
    """The random weights and configs from the fixed seed (the same values whatever the layout)."""
    if parallel_num not in (16, 64):
        raise ValueError("parallel_num must be 16 or 64")
    generator = torch.Generator().manual_seed(SEED + parallel_num)
    tokenizer = build_tokenizer(parallel_num)
    llm_config = tiny_llm_config(len(tokenizer), hidden, layers)
    llm_config.architectures = ["Qwen3ForCausalLM"]
    llm_body = build_llm(llm_config)
    fill_random_(llm_body, generator)
    llm = {f"model.{k}": v.contiguous() for k, v in llm_body.state_dict().items()}
    llm["lm_head.weight"] = random_tensor("lm_head.weight", (len(tokenizer), hidden), generator)

    ae_config = {"gan_decoder": False, "ddconfig": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "double_z": False,
                 "in_channels": 3, "num_res_blocks": 1, "out_ch": 3, "z_channels": 32}}  # fmt: skip
    autoencoder = BinaryAutoencoder(AutoencoderConfig.from_dict(ae_config))
    fill_random_(autoencoder, generator)

    head_config = {"P_mean": -0.8, "P_std": 0.8, "ch_cond": hidden, "ch_latent": head_channels, "ch_target": 32,
                   "depth_adanln": 1, "depth_latent": head_depth, "diff_batch_mul": 1, "grad_checkpointing": False,
                   "parallel_num": parallel_num, "time_schedule": "logit_normal", "time_shift": 1.0,
                   "use_swiglu": True}  # fmt: skip
    head = DiffusionHead(HeadConfig.from_dict(head_config))
    fill_random_(head, generator)

    projector = TokenProjector(32, hidden)
    fill_random_(projector, generator)
    return TinyParts(tokenizer, llm_config, llm, ae_config, _contiguous(autoencoder.state_dict()), head_config,
                     _contiguous(head.state_dict()), _contiguous(projector.state_dict()))  # fmt: skip


def write_checkpoint(out: Path, parallel_num: int = 64, hidden: int = 64, layers: int = 2,
                     head_channels: int = 128, head_depth: int = 2, layout: str = "native", shards: int = 1,
                     dtype: torch.dtype = torch.float32) -> Path:  # fmt: skip
    """Write a complete checkpoint directory in ``layout`` (``native`` or ``diffusers``); returns it.

    ``shards`` > 1 splits the weights over that many files plus an index, as ``save_pretrained``
    does for large checkpoints: the LLM's in the native layout, every component's in diffusers'.
    ``dtype`` is the dtype stored in the files.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    parts = build_parts(parallel_num, hidden, layers, head_channels, head_depth)
    if dtype != torch.float32:
        for state in parts.weights().values():
            state.update({k: v.to(dtype) for k, v in state.items()})
    out.mkdir(parents=True, exist_ok=True)
    write_parts(parts, layout_files(out, Layout(layout)), shards)
    marker = {"random": True, "seed": SEED + parallel_num, "written_by": "python -m model.tiny"}
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2))  # last: a complete checkpoint
    return out


def write_parts(parts: TinyParts, files: CheckpointFiles, shards: int) -> None:
    """Every file of the checkpoint where ``files`` (either layout) has it.

    The native layout shards the LLM's weights only; the diffusers layout, as its port's
    ``save_pretrained``, shards every component's and stamps each config with its class.
    """
    diffusers = files.layout is Layout.DIFFUSERS
    write_tokenizer(parts.tokenizer, files.tokenizer_dir)
    write_llm(parts, files.llm, shards)
    configs, weights = parts.configs(), parts.weights()
    for component in (files.autoencoder, files.head, files.projector):
        component.weights.path.parent.mkdir(parents=True, exist_ok=True)
        if component.config is not None:
            config = configs[component.name]
            if diffusers:
                stamp = {"_class_name": DIFFUSERS_COMPONENTS[component.name].class_name}
                config = {**stamp, "_diffusers_version": DIFFUSERS_VERSION, **config}
            component.config.write_text(json.dumps(config, indent=2, sort_keys=diffusers))
        save_weights(weights[component.name], component.weights.path, shards if diffusers else 1)
    if files.model_index is not None:
        sizes = [list(size) for size in supported_sizes(parts.head_config["parallel_num"])]
        model_index = {
            "_class_name": PIPELINE_CLASS,
            "_diffusers_version": DIFFUSERS_VERSION,
            **{c.folder: [c.library, c.class_name] for c in DIFFUSERS_COMPONENTS.values()},
            TOKENIZER_FOLDER: ["transformers", TOKENIZER_CLASS],
            "supported_image_sizes": sizes,
        }
        files.model_index.write_text(json.dumps(model_index, indent=2, sort_keys=True))


def write_llm(parts: TinyParts, files: ComponentFiles, shards: int) -> None:
    assert files.config is not None
    folder = files.config.parent
    folder.mkdir(parents=True, exist_ok=True)
    parts.llm_config.save_pretrained(str(folder))
    portable_llm_config(files.config)
    generation = {"bos_token_id": parts.llm_config.bos_token_id, "eos_token_id": parts.llm_config.eos_token_id}
    (folder / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))
    save_weights(parts.llm, files.weights.path, shards)


def write_tokenizer(tokenizer: Qwen2TokenizerFast, folder: Path) -> None:
    """The Qwen2 tokenizer files, in a form transformers 4.57 and 5.x both read."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    tokenizer.backend_tokenizer.model.save(str(folder))  # vocab.json + merges.txt, as the Qwen files
    added = {token: index for token, index in tokenizer.get_vocab().items() if index >= BPE_VOCAB}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False))
    # Written here rather than by save_pretrained: transformers 5 no longer writes this file.
    in_id_order = sorted(added, key=lambda token: added[token])
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(in_id_order), indent=2))
    portable_tokenizer_config(folder / "tokenizer_config.json")


def portable_tokenizer_config(path: Path) -> None:
    """Rewrite ``tokenizer_config.json`` in the transformers 4 form, which transformers 5 reads too.

    transformers 5 saves the additional special tokens as a list under ``extra_special_tokens``;
    4.57 reads that key as a name -> token mapping and fails on a list. The released Qwen files
    (and 4.57) list them under ``additional_special_tokens``, which 5 still accepts.
    """
    config = json.loads(path.read_text())
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config.setdefault("additional_special_tokens", extra)
    elif isinstance(extra, dict) and extra:
        config["extra_special_tokens"] = extra
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def portable_llm_config(path: Path) -> None:
    """Rewrite the LLM's ``config.json`` with RoPE in the transformers 4 keys, which transformers 5 reads too.

    transformers 5's ``save_pretrained`` writes RoPE only as ``rope_parameters``, a key 4.57 does
    not know: it then ran the checkpoint with its default theta 10000 instead of 1e6, silently
    (the official code, on transformers 4.57, agreed with us on 70 % of the tokens). The released
    configs, and 4.57, write ``rope_theta`` + ``rope_scaling: null``; both versions read that alike.
    """
    raw = json.loads(path.read_text())
    portable = with_transformers4_rope(raw, read_rope(raw, path.name))
    path.write_text(json.dumps(portable, indent=2, sort_keys=True) + "\n")


def save_weights(tensors: dict[str, torch.Tensor], path: Path, shards: int = 1) -> None:
    """One safetensors file, or ``shards`` files ``<stem>-0000i-of-0000n.safetensors`` plus the index.

    Tensors are stored 64-byte aligned (see :func:`model.checkpoint.tensor_files.write_safetensors`).
    """
    if shards <= 1:
        write_safetensors(tensors, path, metadata={"format": "pt"})
        return
    stem = path.name.removesuffix(".safetensors")
    keys = sorted(tensors)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        chunk = keys[i * len(keys) // shards : (i + 1) * len(keys) // shards]
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors({k: tensors[k] for k in chunk}, path.parent / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path.with_name(path.name + ".index.json").write_text(json.dumps(index, indent=2))


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}
