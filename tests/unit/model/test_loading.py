"""Loading the native checkpoint layout key by key, and the errors for broken checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint.configs import read_configs
from model.checkpoint.loading import load_modules
from model.exceptions import CheckpointError
from model.pipeline import BitDancePipeline

EXPECTED_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "ae_config.json",
    "ae.safetensors", "vision_head_config.json", "vision_head.safetensors", "projector.safetensors",
}  # fmt: skip


def copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    return target


def test_tiny_checkpoint_has_the_native_layout(tiny64_dir: Path) -> None:
    assert EXPECTED_FILES <= {p.name for p in tiny64_dir.iterdir()}
    config = json.loads((tiny64_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    head = json.loads((tiny64_dir / "vision_head_config.json").read_text())
    assert head["parallel_num"] == 64 and head["ch_cond"] == config["hidden_size"]
    ae = load_file(str(tiny64_dir / "ae.safetensors"))
    assert any(k.startswith("encoder.") for k in ae) and any(k.startswith("decoder.") for k in ae)
    for name in ("model.safetensors", "ae.safetensors", "vision_head.safetensors", "projector.safetensors"):
        for key, tensor in load_file(str(tiny64_dir / name)).items():
            assert tensor.abs().sum() > 0, f"{name}:{key} is all zeros"


def test_every_tensor_is_loaded_key_by_key(tiny64_dir: Path) -> None:
    modules = load_modules(read_configs(tiny64_dir), torch.device("cpu"), torch.float32)
    llm = load_file(str(tiny64_dir / "model.safetensors"))
    for key, value in modules.llm.state_dict().items():
        assert torch.equal(value, llm[f"model.{key}"]), key
    ae = load_file(str(tiny64_dir / "ae.safetensors"))
    for key, value in modules.autoencoder.state_dict().items():
        assert torch.equal(value, ae[f"decoder.{key}"]), key
    for module, name in ((modules.head, "vision_head"), (modules.projector, "projector")):
        stored = load_file(str(tiny64_dir / f"{name}.safetensors"))
        assert set(module.state_dict()) == set(stored)
        for key, value in module.state_dict().items():
            assert torch.equal(value, stored[key]), key
    assert not any(p.is_meta for p in modules.llm.parameters())
    assert modules.llm.rotary_emb.inv_freq.device.type == "cpu"


def test_sharded_weights_load_the_same(tiny16_dir: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    weights = load_file(str(ckpt / "model.safetensors"))
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: weights[k] for k in shard_keys}, str(ckpt / shard))
        weight_map.update(dict.fromkeys(shard_keys, shard))
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    modules = load_modules(read_configs(ckpt), torch.device("cpu"), torch.float32)
    for key, value in modules.llm.state_dict().items():
        assert torch.equal(value, weights[f"model.{key}"])


@pytest.mark.parametrize(
    "name",
    ["projector.safetensors", "ae.safetensors", "vision_head_config.json", "model.safetensors", "tokenizer.json"],
)
def test_missing_file_is_named(tiny16_dir: Path, tmp_path: Path, name: str) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        BitDancePipeline.from_pretrained(ckpt)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        BitDancePipeline.from_pretrained(tmp_path / "nope")


def test_renamed_key_is_named(tiny16_dir: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    head = load_file(str(ckpt / "vision_head.safetensors"))
    head["net.final_layer.linear.weight_renamed"] = head.pop("net.final_layer.linear.weight")
    save_file(head, str(ckpt / "vision_head.safetensors"))
    with pytest.raises(CheckpointError) as error:
        BitDancePipeline.from_pretrained(ckpt)
    message = str(error.value)
    assert "vision_head.safetensors" in message
    assert "missing keys net.final_layer.linear.weight" in message
    assert "unexpected keys net.final_layer.linear.weight_renamed" in message


def test_unused_encoder_keys_are_still_required(tiny16_dir: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    ae = {k: v for k, v in load_file(str(ckpt / "ae.safetensors")).items() if k != "encoder.conv_in.weight"}
    save_file(ae, str(ckpt / "ae.safetensors"))
    with pytest.raises(CheckpointError, match="ae.safetensors: missing keys encoder.conv_in.weight"):
        load_modules(read_configs(ckpt), torch.device("cpu"), torch.float32)


def test_wrong_shape_is_named(tiny16_dir: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    projector = load_file(str(ckpt / "projector.safetensors"))
    projector["fc1.bias"] = torch.ones(3)
    save_file(projector, str(ckpt / "projector.safetensors"))
    with pytest.raises(CheckpointError, match=r"projector.safetensors: shape mismatch fc1.bias \(3,\)"):
        load_modules(read_configs(ckpt), torch.device("cpu"), torch.float32)


def test_dtype_is_applied_on_load(tiny16_dir: Path) -> None:
    modules = load_modules(read_configs(tiny16_dir), torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in modules.head.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in modules.llm.parameters()} == {torch.bfloat16}
