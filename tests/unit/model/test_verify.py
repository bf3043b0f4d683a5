"""``python -m model.verify``: a sound checkpoint passes with a summary; each corruption is one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from model.checkpoint.verification import verify_checkpoint
from model.verify import main as verify_main


def copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    return target


def run_verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = verify_main([str(path)])
    return code, capsys.readouterr().out.splitlines()


def problem_lines(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, lines = run_verify(path, capsys)
    assert code == 1
    problems = [line for line in lines if not line.startswith("note: ")]
    assert problems == verify_checkpoint(path).problems  # the CLI prints exactly the report's lines
    return problems


def edit_json(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_sound_native_checkpoint(tiny16_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_verify(tiny16_dir, capsys)
    assert code == 0
    text = "\n".join(lines)
    assert "layout: native" in text and "variant: parallel_num 16 (16x)" in text and "512x512" in text
    for module in ("llm", "autoencoder", "head", "projector", "total"):
        assert any(line.startswith(module) and "parameters" in line for line in lines), module
    assert lines[-1].startswith("OK: ")


def test_sound_sharded_diffusers_checkpoint(tiny16_diffusers_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_verify(tiny16_diffusers_dir, capsys)
    assert code == 0
    assert "layout: diffusers" in lines
    assert any("text_encoder/model.safetensors.index.json" in line for line in lines)


def test_64x_variant_serves_only_the_1024_px_sizes(tiny64_dir: Path) -> None:
    report = verify_checkpoint(tiny64_dir)
    assert report.sound and report.parallel_num == 64 and (512, 512) not in report.sizes
    assert (1024, 1024) in report.sizes


def test_truncated_safetensors(tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    path = ckpt / "ae.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    (line,) = problem_lines(ckpt, capsys)
    assert line.startswith("ae.safetensors: truncated")


def test_unreadable_safetensors(tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    path = ckpt / "vision_head.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"#" * 40 + data[48:])  # header garbled, length intact
    (line,) = problem_lines(ckpt, capsys)
    assert line.startswith("vision_head.safetensors: unreadable safetensors header")
    path.write_bytes(b"\x00" * 4)
    (line,) = problem_lines(ckpt, capsys)
    assert line.startswith("vision_head.safetensors: truncated or not a safetensors file")


def test_missing_shard(tiny16_diffusers_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_diffusers_dir, tmp_path)
    (ckpt / "text_encoder" / "model-00002-of-00002.safetensors").unlink()
    (line,) = problem_lines(ckpt, capsys)
    assert line == (
        "text_encoder/model.safetensors.index.json: missing shard(s) text_encoder/model-00002-of-00002.safetensors"
    )


def test_missing_file(tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    (ckpt / "vision_head.safetensors").unlink()
    (ckpt / "tokenizer.json").unlink()
    lines = problem_lines(ckpt, capsys)
    assert "tokenizer.json: missing" in lines
    assert any(line.startswith("vision_head.safetensors: missing") for line in lines)


def test_missing_key(tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    projector = load_file(str(ckpt / "projector.safetensors"))
    del projector["fc2.bias"]
    save_file(projector, str(ckpt / "projector.safetensors"))
    assert problem_lines(ckpt, capsys) == ["projector.safetensors: missing keys fc2.bias"]


def test_key_listed_by_the_index_but_absent_from_its_shard(
    tiny16_diffusers_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = copy_checkpoint(tiny16_diffusers_dir, tmp_path)
    shard = ckpt / "projector" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(shard))
    (line,) = problem_lines(ckpt, capsys)
    assert line.startswith(f"projector/diffusion_pytorch_model-00001-of-00002.safetensors: lacks {dropped}")


def test_wrong_shape(tiny16_diffusers_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_diffusers_dir, tmp_path)
    index = json.loads((ckpt / "diffusion_head/diffusion_pytorch_model.safetensors.index.json").read_text())
    shard = ckpt / "diffusion_head" / index["weight_map"]["net.final_layer.linear.bias"]
    tensors = load_file(str(shard))
    tensors["net.final_layer.linear.bias"] = tensors["net.final_layer.linear.bias"][:5].clone()
    save_file(tensors, str(shard))
    (line,) = problem_lines(ckpt, capsys)
    assert line == (f"diffusion_head/{shard.name}: shape mismatch net.final_layer.linear.bias (5,) != (32,)")


def test_unknown_config_fields(tiny16_dir: Path, tiny16_diffusers_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    native = copy_checkpoint(tiny16_dir, tmp_path / "n")
    edit_json(native / "vision_head_config.json", lambda c: c.update(use_flash=True))
    assert problem_lines(native, capsys) == ["vision_head_config.json: unknown config field(s) use_flash"]
    diffusers = copy_checkpoint(tiny16_diffusers_dir, tmp_path / "d")
    edit_json(diffusers / "autoencoder/config.json", lambda c: c["ddconfig"].update(dropout=0.1))
    edit_json(diffusers / "projector/config.json", lambda c: c.update(bias=False))
    assert problem_lines(diffusers, capsys) == [
        "autoencoder/config.json: unknown config field(s) ddconfig.dropout",
        "projector/config.json: unknown config field(s) bias",
    ]


def test_inconsistent_config_fields(tiny16_dir: Path, tiny16_diffusers_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    native = copy_checkpoint(tiny16_dir, tmp_path / "n")
    edit_json(native / "vision_head_config.json", lambda c: c.update(ch_cond=32, ch_target=16))
    assert problem_lines(native, capsys) == [
        "vision_head_config.json: ch_cond 32 != hidden_size 64 of config.json",
        "vision_head_config.json: ch_target 16 != z_channels 32 of ae_config.json",
    ]
    diffusers = copy_checkpoint(tiny16_diffusers_dir, tmp_path / "d")
    edit_json(diffusers / "projector/config.json", lambda c: c.update(out_dim=128))
    assert problem_lines(diffusers, capsys) == [
        "projector/config.json: out_dim 128 != hidden_size 64 of text_encoder/config.json"
    ]


def without_image_tokens(folder: Path) -> None:
    """Strip ``<|res_N|>`` and ``<|query_N|>`` from every tokenizer file: a plain Qwen tokenizer."""

    def image_token(token: str) -> bool:
        return token.startswith(("<|res_", "<|query_"))

    edit_json(folder / "tokenizer.json", lambda t: t.update(added_tokens=[
        a for a in t["added_tokens"] if not image_token(a["content"])
    ]))  # fmt: skip

    def config(c: dict) -> None:
        c["additional_special_tokens"] = [t for t in c.get("additional_special_tokens", []) if not image_token(t)]
        decoder = c.get("added_tokens_decoder", {})
        c["added_tokens_decoder"] = {k: v for k, v in decoder.items() if not image_token(v["content"])}

    edit_json(folder / "tokenizer_config.json", config)
    edit_json(folder / "added_tokens.json", lambda a: [a.pop(k) for k in list(a) if image_token(k)])
    edit_json(folder / "special_tokens_map.json", lambda m: m.update(additional_special_tokens=[
        t for t in m["additional_special_tokens"] if not image_token(t["content"])
    ]))  # fmt: skip


def test_tokenizer_without_the_special_tokens(tiny16_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    without_image_tokens(ckpt)
    (line,) = problem_lines(ckpt, capsys)
    assert line.startswith("tokenizer.json: lacks the special token(s) <|res_16|>, <|res_24|>")


def test_tokenizer_of_the_other_variant(tiny16_dir: Path, tiny64_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        shutil.copy(tiny64_dir / name, ckpt / name)
    lines = problem_lines(ckpt, capsys)
    assert any(
        line.startswith("tokenizer.json: has query tokens up to <|query_63|> but parallel_num is 16") for line in lines
    )
    assert any(line.startswith("tokenizer.json: token ids reach") for line in lines)  # the 64x vocabulary is larger


def test_every_problem_is_listed(tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = copy_checkpoint(tiny16_dir, tmp_path)
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:-8])
    projector = load_file(str(ckpt / "projector.safetensors"))
    projector["fc1.extra"] = projector["fc1.bias"].clone()
    save_file(projector, str(ckpt / "projector.safetensors"))
    lines = problem_lines(ckpt, capsys)
    assert len(lines) == 2
    assert lines[0].startswith("model.safetensors: truncated")
    assert lines[1] == "projector.safetensors: unexpected keys fc1.extra"


def test_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert problem_lines(tmp_path / "nope", capsys) == [f"checkpoint directory {tmp_path / 'nope'} does not exist"]
