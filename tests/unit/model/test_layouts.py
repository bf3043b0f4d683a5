"""Both published layouts (native and diffusers), single-file and sharded, load the same weights and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint.configs import read_configs
from model.checkpoint.layout import Layout, locate_checkpoint
from model.checkpoint.loading import load_modules
from model.checkpoint.tiny_checkpoint import write_checkpoint
from model.exceptions import CheckpointError
from model.pipeline import BitDancePipeline
from model.tiny import main as tiny_main

DIFFUSERS_FILES = {
    "model_index.json",
    "text_encoder/config.json",
    "text_encoder/generation_config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "autoencoder/config.json",
    "diffusion_head/config.json",
    "projector/config.json",
}
COMPONENT_WEIGHTS = {
    "text_encoder": "model.safetensors",
    "autoencoder": "diffusion_pytorch_model.safetensors",
    "diffusion_head": "diffusion_pytorch_model.safetensors",
    "projector": "diffusion_pytorch_model.safetensors",
}


def all_tensors(root: Path, folder: str, name: str) -> dict[str, torch.Tensor]:
    """Every tensor of one component, from the single file or from the shards its index lists."""
    single = root / folder / name
    if single.is_file():
        return load_file(str(single))
    index = json.loads((root / folder / f"{name}.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(root / folder / shard)))
    assert set(tensors) == set(index["weight_map"])
    return tensors


def test_tiny_cli_writes_the_diffusers_layout(tmp_path: Path, tiny16_dir: Path) -> None:
    out = tmp_path / "d"
    assert tiny_main([str(out), "--parallel-num", "16", "--layout", "diffusers"]) == 0
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert DIFFUSERS_FILES <= written
    for folder, name in COMPONENT_WEIGHTS.items():
        assert f"{folder}/{name}" in written
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "BitDanceDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"]
    assert index["tokenizer"] == ["transformers", "Qwen2TokenizerFast"]
    assert [entry[1] for entry in (index["autoencoder"], index["diffusion_head"], index["projector"])] == [
        "BitDanceAutoencoder",
        "BitDanceDiffusionHead",
        "BitDanceProjector",
    ]
    assert [512, 512] in index["supported_image_sizes"]
    ae = json.loads((out / "autoencoder/config.json").read_text())
    assert set(ae) == {"_class_name", "_diffusers_version", "ddconfig", "gan_decoder"}
    head = json.loads((out / "diffusion_head/config.json").read_text())
    native_head = json.loads((tiny16_dir / "vision_head_config.json").read_text())
    assert {k: v for k, v in head.items() if not k.startswith("_")} == native_head
    projector = json.loads((out / "projector/config.json").read_text())
    assert {k: v for k, v in projector.items() if not k.startswith("_")} == {
        "in_dim": 32,
        "out_dim": 64,
        "hidden_act": "gelu_pytorch_tanh",
    }
    # Tensor names inside are the native ones.
    native = {
        "text_encoder": load_file(str(tiny16_dir / "model.safetensors")),
        "autoencoder": load_file(str(tiny16_dir / "ae.safetensors")),
        "diffusion_head": load_file(str(tiny16_dir / "vision_head.safetensors")),
        "projector": load_file(str(tiny16_dir / "projector.safetensors")),
    }
    for folder, name in COMPONENT_WEIGHTS.items():
        stored = all_tensors(out, folder, name)
        assert set(stored) == set(native[folder])
        assert all(torch.equal(stored[k], native[folder][k]) for k in stored), folder


def test_layout_is_told_from_the_folder(tiny16_dir: Path, tiny16_diffusers_dir: Path, tmp_path: Path) -> None:
    assert locate_checkpoint(tiny16_dir).layout is Layout.NATIVE
    diffusers = locate_checkpoint(tiny16_diffusers_dir)
    assert diffusers.layout is Layout.DIFFUSERS
    assert diffusers.tokenizer_dir == tiny16_diffusers_dir / "tokenizer"
    assert diffusers.llm.weights.sharded and diffusers.head.weights.sharded
    with pytest.raises(CheckpointError, match="neither model_index.json .* nor vision_head_config.json"):
        locate_checkpoint(tmp_path)


def test_configs_are_the_same_in_both_layouts(tiny16_dir: Path, tiny16_diffusers_dir: Path) -> None:
    native = read_configs(locate_checkpoint(tiny16_dir))
    diffusers = read_configs(locate_checkpoint(tiny16_diffusers_dir))
    assert native.head == diffusers.head and native.autoencoder == diffusers.autoencoder
    assert native.projector == diffusers.projector
    assert native.llm.to_dict() == diffusers.llm.to_dict()
    assert diffusers.listed_sizes is not None and (512, 512) in diffusers.listed_sizes


def test_every_tensor_is_the_same_in_both_layouts(tiny16_dir: Path, tiny16_diffusers_dir: Path) -> None:
    native = load_modules(read_configs(tiny16_dir), torch.device("cpu"), torch.float32)
    diffusers = load_modules(read_configs(tiny16_diffusers_dir), torch.device("cpu"), torch.float32)
    for name in ("llm", "autoencoder", "head", "projector"):
        ours, theirs = getattr(native, name).state_dict(), getattr(diffusers, name).state_dict()
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert native.stats is not None and diffusers.stats is not None
    assert native.stats.bytes_loaded == diffusers.stats.bytes_loaded > 0


def test_same_images_from_both_layouts(pipe16: BitDancePipeline, tiny16_diffusers_dir: Path) -> None:
    diffusers = BitDancePipeline.from_pretrained(tiny16_diffusers_dir)
    assert diffusers.supported_sizes() == pipe16.supported_sizes()
    for guidance in (1.0, 4.0):
        ours = pipe16.generate("a lighthouse at dusk", 512, 512, 3, guidance, seed=11, num_images=2)
        theirs = diffusers.generate("a lighthouse at dusk", 512, 512, 3, guidance, seed=11, num_images=2)
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sharded_native_checkpoint_loads_the_same(tiny16_dir: Path, tmp_path: Path) -> None:
    sharded = write_checkpoint(tmp_path / "n", parallel_num=16, shards=3)
    assert not (sharded / "model.safetensors").exists()
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(sharded.glob("model-0000?-of-00003.safetensors"))) == 3
    ours = load_modules(read_configs(sharded), torch.device("cpu"), torch.float32).llm.state_dict()
    reference = load_file(str(tiny16_dir / "model.safetensors"))
    assert all(torch.equal(v, reference[f"model.{k}"]) for k, v in ours.items())


def test_bf16_files_load_into_the_requested_dtype(tmp_path: Path, tiny16_dir: Path) -> None:
    bf16 = write_checkpoint(tmp_path / "bf16", parallel_num=16, layout="diffusers", dtype=torch.bfloat16)
    modules = load_modules(read_configs(bf16), torch.device("cpu"), torch.bfloat16)
    reference = load_file(str(tiny16_dir / "vision_head.safetensors"))
    for key, value in modules.head.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, reference[key].to(torch.bfloat16)), key
    upcast = load_modules(read_configs(bf16), torch.device("cpu"), torch.float32)
    assert {p.dtype for p in upcast.head.parameters()} == {torch.float32}


def test_tokenizer_files_are_readable_by_transformers_4_and_5(tiny16_dir: Path) -> None:
    """transformers 5 writes ``extra_special_tokens`` as a list, which 4.57 cannot read: not written."""
    config = json.loads((tiny16_dir / "tokenizer_config.json").read_text())
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert "<|vision_start|>" in config["additional_special_tokens"]
