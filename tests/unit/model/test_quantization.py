"""fp8 weights: quantised at load or stored pre-quantised, computed by dequantising; never a wrong image.

A pre-quantised checkpoint here is the tiny one with its LLM and head linears rewritten as fp8 e4m3
plus ``.weight_scale`` (what ``quantization="fp8"`` computes at load, stored). Every way such a
file can be wrong (an fp8 tensor without its scale, a scale of the wrong shape or dtype, fp8 where
no linear weight is, an fp8 dtype the installed torch lacks) is an error naming the file, both at
load and from ``model.verify``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model import quantization
from model.checkpoint import tensor_files
from model.checkpoint.configs import read_configs
from model.checkpoint.loading import load_modules
from model.checkpoint.modules import MetaModules
from model.checkpoint.tensor_files import TensorReader, read_header
from model.checkpoint.verification import verify_checkpoint
from model.exceptions import CheckpointError
from model.pipeline import BitDancePipeline, GenerationRequest
from model.precision import autocast
from model.quantization import (
    FP8_MAX,
    HEAD_KEPT,
    Fp8Linear,
    Fp8Quantizer,
    check_quantization,
    dequantize,
    quantize_fp8,
    quantized_linears,
)
from model.verify import main as verify_main

F8 = torch.float8_e4m3fn
LLM_WEIGHT = "model.layers.0.mlp.up_proj.weight"


def test_quantize_fp8_scales_each_output_channel() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 48, generator=generator) * 0.02
    weight[3] *= 100  # an outlier row costs the other rows nothing
    weight[5] = 0
    quantized, scale = quantize_fp8(weight)
    assert quantized.dtype == F8 and scale.dtype == torch.float32 and scale.shape == (64, 1)
    assert torch.equal(quantized.float().abs().amax(dim=1)[[0, 3]], torch.tensor([FP8_MAX, FP8_MAX]))
    assert scale[5].item() == 1.0 and not quantized[5].float().any()
    restored = dequantize(quantized, scale, torch.float32)
    error = (restored - weight).norm(dim=1) / weight.norm(dim=1).clamp_min(1e-12)
    assert error[weight.norm(dim=1) > 0].max() < 0.04  # e4m3 keeps 3 mantissa bits


@pytest.mark.parametrize("chunk", [quantization.QUANTIZE_CHUNK, 100, 48 * 7], ids=["one-block", "row-blocks", "7-rows"])
def test_quantize_fp8_in_blocks_is_the_plain_formula(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantised a block of rows at a time through one buffer: the same bits as the whole-tensor formula."""
    monkeypatch.setattr(quantization, "QUANTIZE_CHUNK", chunk)
    weight = (torch.randn(64, 48, generator=torch.Generator().manual_seed(2)) * 0.05).to(torch.bfloat16)
    weight[10] = 0
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    expected = (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(F8)
    for quantized, scales in (quantize_fp8(weight), Fp8Quantizer()(weight)):
        assert torch.equal(scales, scale) and torch.equal(quantized.view(torch.uint8), expected.view(torch.uint8))


def test_fp8_linear_computes_the_dequantised_linear() -> None:
    generator = torch.Generator().manual_seed(1)
    linear = nn.Linear(48, 32)
    nn.init.normal_(linear.weight, std=0.1, generator=generator)
    layer = Fp8Linear.from_linear(linear)
    x = torch.randn(5, 48, generator=generator)
    expected = F.linear(x, dequantize(layer.weight, layer.weight_scale, torch.float32), linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    with autocast(torch.device("cpu"), torch.bfloat16):  # the compute dtype is autocast's
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("value", ["fp4", "FP8", "int8", ""])
def test_unknown_quantization_is_refused_naming_it(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"unknown quantization {value!r}"):
        check_quantization(value)
    with pytest.raises(ValueError, match=f"unknown quantization {value!r}"):  # before any file is read
        BitDancePipeline.from_pretrained(tmp_path / "not-even-a-folder", quantization=value)
    assert check_quantization(None) is None and check_quantization("none") is None


def test_which_layers_are_quantised(tiny16_dir: Path) -> None:
    modules = MetaModules.build(read_configs(tiny16_dir))
    llm = quantized_linears("llm", modules.llm)
    assert len(llm) == 7 * modules.configs.llm.num_hidden_layers  # q, k, v, o, gate, up, down
    head = quantized_linears("head", modules.head)
    every_head_linear = {n for n, m in modules.head.named_modules() if isinstance(m, nn.Linear)}
    assert set(head) == every_head_linear - HEAD_KEPT and HEAD_KEPT < every_head_linear
    assert (
        quantized_linears("autoencoder", modules.autoencoder) == {} == quantized_linears("projector", modules.projector)
    )


@pytest.fixture(scope="module")
def pipe16_fp8(tiny16_dir: Path) -> BitDancePipeline:
    return BitDancePipeline.from_pretrained(tiny16_dir, device="cpu", dtype=torch.bfloat16, quantization="fp8")


def test_fp8_pipeline_holds_fp8_weights_and_generates(pipe16_fp8: BitDancePipeline, tiny16_dir: Path) -> None:
    layers = [m for part in (pipe16_fp8.llm, pipe16_fp8.head) for m in part.modules() if isinstance(m, Fp8Linear)]
    plain = MetaModules.build(read_configs(tiny16_dir))
    assert len(layers) == len(quantized_linears("llm", plain.llm)) + len(quantized_linears("head", plain.head))
    for layer in layers:
        assert layer.weight.dtype == F8 and layer.weight_scale.dtype == torch.float32
        assert layer.weight_scale.shape == (layer.out_features, 1)
    # Quantised from the file's own float32, row by row: what quantize_fp8 gives.
    stored = load_file(str(tiny16_dir / "model.safetensors"))[LLM_WEIGHT]
    up = pipe16_fp8.llm.layers[0].mlp.up_proj
    assert isinstance(up, Fp8Linear)
    expected, scale = quantize_fp8(stored)
    assert torch.equal(up.weight.view(torch.uint8), expected.view(torch.uint8)) and torch.equal(up.weight_scale, scale)
    assert pipe16_fp8.quantization == "fp8"

    requests = [GenerationRequest("a red fox", 3, 7.5), GenerationRequest("an owl", 4, 3.0, 2)]
    first = pipe16_fp8.generate_batch(requests, height=512, width=512, num_inference_steps=3, return_tokens=True)
    alone = pipe16_fp8.generate_batch(requests[:1], height=512, width=512, num_inference_steps=3, return_tokens=True)
    assert first.tokens is not None and alone.tokens is not None and first.tokens.shape == (3, 1024, 32)
    assert torch.equal(first.tokens[:1], alone.tokens)  # batch-invariant, deterministic
    assert np.array_equal(np.asarray(first.images[0][0]), np.asarray(alone.images[0][0]))


# ---------------------------------------------------------------------------------------------
# Pre-quantised checkpoints in our own layout


def prequantise(source: Path, target: Path, names: tuple[str, ...] = ("model", "vision_head")) -> Path:
    """A copy of ``source`` whose LLM and head linears are stored in fp8 with ``.weight_scale``."""
    shutil.copytree(source, target)
    modules = MetaModules.build(read_configs(target))
    for name, component in (("model", "llm"), ("vision_head", "head")):
        if name not in names:
            continue
        module, prefix = modules.loaded(component)
        tensors = load_file(str(target / f"{name}.safetensors"))
        for layer in quantized_linears(component, module):
            key = f"{prefix}{layer}.weight"
            tensors[key], tensors[key + "_scale"] = quantize_fp8(tensors[key])
        save_file(tensors, str(target / f"{name}.safetensors"))
    return target


@pytest.fixture(scope="module")
def prequantised16(tiny16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prequantise(tiny16_dir, tmp_path_factory.mktemp("fp8") / "tiny16-fp8")


def test_a_prequantised_checkpoint_verifies_and_gives_the_quantised_at_load_images(
    prequantised16: Path, pipe16_fp8: BitDancePipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify_main([str(prequantised16)]) == 0
    out = capsys.readouterr().out
    assert "F8_E4M3 x14" in out and "llm: 14 linear weights pre-quantised in fp8 with their scales" in out
    stored = BitDancePipeline.from_pretrained(prequantised16, device="cpu", dtype=torch.bfloat16, quantization="fp8")
    request = [GenerationRequest("a red fox", 3, 7.5)]
    ours = stored.generate_batch(request, height=512, width=512, num_inference_steps=2, return_tokens=True)
    theirs = pipe16_fp8.generate_batch(request, height=512, width=512, num_inference_steps=2, return_tokens=True)
    assert ours.tokens is not None and theirs.tokens is not None and torch.equal(ours.tokens, theirs.tokens)
    assert np.array_equal(np.asarray(ours.images[0][0]), np.asarray(theirs.images[0][0]))


def test_a_prequantised_checkpoint_without_quantization_is_dequantised(prequantised16: Path) -> None:
    modules = load_modules(read_configs(prequantised16), torch.device("cpu"), torch.bfloat16)
    stored = load_file(str(prequantised16 / "model.safetensors"))
    up = modules.llm.layers[0].mlp.up_proj
    assert isinstance(up, nn.Linear) and up.weight.dtype == torch.bfloat16
    expected = (stored[LLM_WEIGHT].float() * stored[LLM_WEIGHT + "_scale"]).to(torch.bfloat16)
    assert torch.equal(up.weight, expected) and torch.equal(up.weight, dequantize(*stored_pair(stored), torch.bfloat16))


def stored_pair(stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return stored[LLM_WEIGHT], stored[LLM_WEIGHT + "_scale"]


def rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def refused(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The problem lines of ``model.verify`` (exit 1), which loading raises too, with or without fp8."""
    assert verify_main([str(path)]) == 1
    lines = capsys.readouterr().out.strip()
    for value in (None, "fp8"):
        with pytest.raises(CheckpointError) as error:
            BitDancePipeline.from_pretrained(path, quantization=value)
        assert str(error.value) == lines
    return lines


def test_an_fp8_tensor_without_its_scale_is_refused(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the reader cast such a tensor without a scale: a checkpoint that verified and gave a wrong image."""
    path = prequantise(tiny16_dir, tmp_path / "ckpt")
    rewrite(path / "model.safetensors", lambda t: t.pop(LLM_WEIGHT + "_scale"))
    assert refused(path, capsys) == (
        f"model.safetensors: {LLM_WEIGHT} is F8_E4M3 without its scale {LLM_WEIGHT}_scale "
        "(fp8 values without their scales are not the weights)"
    )


def test_an_fp8_tensor_of_the_original_layout_without_scales_is_refused(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An fp8 weight simply cast (no scale anywhere): the same refusal, never a silent cast."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny16_dir, path)
    rewrite(
        path / "vision_head.safetensors",
        lambda t: t.update({"net.cond_embed.weight": t["net.cond_embed.weight"].to(F8)}),
    )
    assert "vision_head.safetensors: net.cond_embed.weight is F8_E4M3 without its scale" in refused(path, capsys)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (torch.ones(7, 1), "has shape [7, 1]; the scale of {key} must be [{rows}, 1], [{rows}], [1] or a scalar"),
        (torch.ones(1, 1, 1), "has shape [1, 1, 1]; the scale of {key} must be"),
        (torch.ones(1, dtype=torch.int32), "is I32; a scale must be F32, BF16 or F16"),
    ],
    ids=["rows", "rank", "dtype"],
)
def test_a_malformed_scale_is_refused(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], scale: torch.Tensor, message: str
) -> None:
    path = prequantise(tiny16_dir, tmp_path / "ckpt")
    rows = load_file(str(path / "model.safetensors"))[LLM_WEIGHT].shape[0]
    rewrite(path / "model.safetensors", lambda t: t.update({LLM_WEIGHT + "_scale": scale}))
    expected = f"model.safetensors: {LLM_WEIGHT}_scale " + message.format(key=LLM_WEIGHT, rows=rows)
    assert refused(path, capsys).startswith(expected)


def test_scalar_and_flat_scales_are_accepted(tiny16_dir: Path, tmp_path: Path) -> None:
    path = prequantise(tiny16_dir, tmp_path / "ckpt")
    tensors = load_file(str(path / "model.safetensors"))
    rows = tensors[LLM_WEIGHT].shape[0]
    tensors[LLM_WEIGHT + "_scale"] = torch.full((), 0.5)
    other = "model.layers.0.mlp.down_proj.weight"
    tensors[other + "_scale"] = tensors[other + "_scale"].view(-1).to(torch.bfloat16)
    save_file(tensors, str(path / "model.safetensors"))
    assert verify_checkpoint(path).sound
    pipe = BitDancePipeline.from_pretrained(path, quantization="fp8")
    up = pipe.llm.layers[0].mlp.up_proj
    assert isinstance(up, Fp8Linear) and torch.equal(up.weight_scale, torch.full((rows, 1), 0.5))


def test_fp8_where_no_linear_weight_is_and_stray_scales_are_refused(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = prequantise(tiny16_dir, tmp_path / "ckpt", names=("model",))
    norm = "model.layers.0.input_layernorm.weight"

    def change(t: dict[str, torch.Tensor]) -> None:
        t[norm + "_scale"] = torch.ones(())
        t[norm] = t[norm].to(F8)

    rewrite(path / "model.safetensors", change)
    rewrite(path / "vision_head.safetensors", lambda t: t.update({"net.cond_embed.weight_scale": torch.ones(1)}))
    lines = refused(path, capsys).splitlines()
    assert "model.safetensors: unexpected keys model.layers.0.input_layernorm.weight_scale" in lines
    assert (
        f"model.safetensors: {norm} is F8_E4M3, but only the linear weights of the LLM and the diffusion head "
        "may be stored in fp8"
    ) in lines
    assert "vision_head.safetensors: unexpected keys net.cond_embed.weight_scale" in lines  # not an fp8 weight


def test_an_fp8_dtype_the_installed_torch_lacks_is_named(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``F8_E5M2`` read by a torch without ``float8_e5m2`` (torch < 2.1): the table it would have."""
    path = prequantise(tiny16_dir, tmp_path / "ckpt")
    rewrite(path / "model.safetensors", lambda t: t.update({LLM_WEIGHT: t[LLM_WEIGHT].to(torch.float8_e5m2)}))
    assert verify_checkpoint(path).sound  # e5m2 weights with scales are accepted where torch has them
    monkeypatch.delitem(tensor_files.DTYPES, "F8_E5M2")
    lines = refused(path, capsys)
    assert lines.startswith(f"model.safetensors: {LLM_WEIGHT} is F8_E5M2, which the installed torch ")
    assert "cannot hold (no torch.float8_e5m2; upgrade torch" in lines


def test_the_reader_never_reads_an_fp8_tensor_alone(tiny16_dir: Path, tmp_path: Path) -> None:
    path = prequantise(tiny16_dir, tmp_path / "ckpt")
    entry = read_header(path / "model.safetensors", "model.safetensors")[LLM_WEIGHT]
    with TensorReader(torch.device("cpu"), torch.float32) as reader:
        with pytest.raises(CheckpointError, match=f"model.safetensors: {LLM_WEIGHT}: F8_E4M3 tensor read without"):
            reader.read(entry)
        assert reader.read_as_stored(entry).dtype == F8
