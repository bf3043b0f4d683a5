"""Write a tiny random BitDance checkpoint in the native layout: ``python -m model.tiny OUT_DIR``.

The weights are random from a fixed seed (every layer non-zero, unlike training's zero init), the
tokenizer is a byte-level BPE trained here on generated English plus the Qwen and BitDance special
tokens, and the shapes are small enough for a 1024x1024 image in a few seconds on two CPU cores.
This is the embedded default that ``make run`` serves and what the tests use.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import nn
from transformers import Qwen2TokenizerFast, Qwen3Config  # type: ignore[attr-defined,unused-ignore]

from model.autoencoder import AutoencoderConfig, BinaryAutoencoder
from model.head import DiffusionHead, HeadConfig
from model.llm import build_backbone
from model.positions import MAX_GRID_POSITIONS
from model.projector import TokenProjector

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


def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Non-zero random weights: fan-in scaled matrices, norms near one, small biases."""
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if param.dim() >= 2:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif "norm" in name and leaf == "weight":
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))


def write_checkpoint(out: Path, parallel_num: int = 64, hidden: int = 64, layers: int = 2,
                     head_channels: int = 128, head_depth: int = 2) -> Path:  # fmt: skip
    """Write a complete checkpoint directory; returns it."""
    if parallel_num not in (16, 64):
        raise ValueError("parallel_num must be 16 or 64")
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED + parallel_num)
    tokenizer = build_tokenizer(parallel_num)
    tokenizer.save_pretrained(str(out))
    tokenizer.backend_tokenizer.model.save(str(out))  # vocab.json + merges.txt, as the Qwen files
    added = {token: index for token, index in tokenizer.get_vocab().items() if index >= BPE_VOCAB}
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False))
    # Written here rather than by save_pretrained: transformers 5 no longer writes this file.
    in_id_order = sorted(added, key=lambda token: added[token])
    (out / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(in_id_order), indent=2))
    llm_config = tiny_llm_config(len(tokenizer), hidden, layers)
    llm_config.architectures = ["Qwen3ForCausalLM"]
    llm_config.save_pretrained(str(out))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": llm_config.bos_token_id, "eos_token_id": llm_config.eos_token_id}, indent=2)
    )
    backbone = build_backbone(llm_config)
    randomize(backbone, generator)
    weights = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    weights["lm_head.weight"] = torch.randn(len(tokenizer), hidden, generator=generator) / math.sqrt(hidden)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    ae_raw = {"gan_decoder": False, "ddconfig": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "double_z": False,
              "in_channels": 3, "num_res_blocks": 1, "out_ch": 3, "z_channels": 32}}  # fmt: skip
    (out / "ae_config.json").write_text(json.dumps(ae_raw, indent=2))
    autoencoder = BinaryAutoencoder(AutoencoderConfig.from_dict(ae_raw))
    randomize(autoencoder, generator)
    save_file(_contiguous(autoencoder.state_dict()), str(out / "ae.safetensors"))

    head_raw = {"P_mean": -0.8, "P_std": 0.8, "ch_cond": hidden, "ch_latent": head_channels, "ch_target": 32,
                "depth_adanln": 1, "depth_latent": head_depth, "diff_batch_mul": 1, "grad_checkpointing": False,
                "parallel_num": parallel_num, "time_schedule": "logit_normal", "time_shift": 1.0,
                "use_swiglu": True}  # fmt: skip
    (out / "vision_head_config.json").write_text(json.dumps(head_raw, indent=2))
    head = DiffusionHead(HeadConfig.from_dict(head_raw))
    randomize(head, generator)
    save_file(_contiguous(head.state_dict()), str(out / "vision_head.safetensors"))

    projector = TokenProjector(32, hidden)
    randomize(projector, generator)
    save_file(_contiguous(projector.state_dict()), str(out / "projector.safetensors"))
    return out


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--parallel-num", type=int, choices=(16, 64), default=64, help="tokens per step")
    parser.add_argument("--hidden", type=int, default=64, help="LLM hidden size")
    parser.add_argument("--layers", type=int, default=2, help="LLM layers")
    parser.add_argument("--head-channels", type=int, default=128, help="diffusion head width (multiple of 128)")
    parser.add_argument("--head-depth", type=int, default=2, help="diffusion head blocks")
    args = parser.parse_args(argv)
    path = write_checkpoint(args.out_dir, args.parallel_num, args.hidden, args.layers, args.head_channels,
                            args.head_depth)  # fmt: skip
    print(f"wrote a tiny {args.parallel_num}x BitDance checkpoint to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
