"""RoPE read alike under transformers 4.57 and 5.x: the config reader's mapping, its refusals and the guard.

These run under whichever transformers runs the suite (``make test`` runs them under 5.x and, in
its second venv, under 4.57), each time against what that version's rotary embedding computes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.checkpoint.configs import read_configs
from model.checkpoint.rope import Rope, check_rotary_embedding, read_rope, with_transformers4_rope
from model.checkpoint.verification import verify_checkpoint
from model.exceptions import CheckpointError
from model.pipeline import BitDancePipeline
from model.verify import main as verify_main

HEAD_DIM = 16  # the tiny checkpoint's: hidden 64, 4 heads


def plain_inv_freq(theta: float, head_dim: int = HEAD_DIM) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def tiny_raw(tiny16_dir: Path) -> dict[str, Any]:
    """The tiny checkpoint's config.json without any RoPE key."""
    raw = json.loads((tiny16_dir / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling", "rope_parameters"):
        raw.pop(key, None)
    return raw


def rotary_of(raw: dict[str, Any]) -> Qwen3RotaryEmbedding:
    """What the installed transformers builds from ``raw`` once the reader has mapped it."""
    config = Qwen3Config.from_dict(with_transformers4_rope(raw, read_rope(raw, "config.json")))
    with torch.device("cpu"):
        return Qwen3RotaryEmbedding(config=config)


def copy_with_rope(tiny16_dir: Path, tmp_path: Path, rope: dict[str, Any]) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny16_dir, target)
    (target / "config.json").write_text(json.dumps({**tiny_raw(tiny16_dir), **rope}))
    return target


def test_model_tiny_writes_the_keys_both_versions_read(tiny16_dir: Path, tiny16_diffusers_dir: Path) -> None:
    for config in (tiny16_dir / "config.json", tiny16_diffusers_dir / "text_encoder" / "config.json"):
        raw = json.loads(config.read_text())
        assert raw["rope_theta"] == 1e6 and raw["rope_scaling"] is None, config
        assert "rope_parameters" not in raw, config


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
# config.json's RoPE keys -> the RoPE they mean (every form transformers 4.57 or 5.x writes).
FORMS: dict[str, tuple[dict[str, Any], Rope]] = {
    "transformers 4 (released configs)": ({"rope_theta": 1e6, "rope_scaling": None}, Rope("default", 1e6)),
    "rope_theta only": ({"rope_theta": 1e6}, Rope("default", 1e6)),
    "transformers 5": ({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}, Rope("default", 1e6)),
    "transformers 5, by layer type": (
        {"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"}}},
        Rope("default", 1e6),
    ),
    "both forms, agreeing": (
        {"rope_theta": 1e6, "rope_scaling": None, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}},
        Rope("default", 1e6),
    ),
    "no RoPE key": ({}, Rope("default", 10000.0)),
    "linear, transformers 5": (
        {"rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}},
        Rope("linear", 5e5, {"factor": 2.0}),
    ),
    "linear, old 'type' key": (
        {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}},
        Rope("linear", 5e5, {"factor": 2.0}),
    ),
    "yarn, transformers 4": ({"rope_theta": 1e6, "rope_scaling": YARN}, Rope("yarn", 1e6, {**YARN})),
    "yarn, transformers 5": ({"rope_parameters": {**YARN, "rope_theta": 1e6}}, Rope("yarn", 1e6, {**YARN})),
}
for _, expected in FORMS.values():
    expected.fields.pop("rope_type", None)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_read_as_the_rope_it_names(form: str, tiny16_dir: Path) -> None:
    keys, expected = FORMS[form]
    raw = {**tiny_raw(tiny16_dir), **json.loads(json.dumps(keys))}
    rope = read_rope(raw, "config.json")
    assert (rope.rope_type, rope.theta, rope.fields) == (expected.rope_type, expected.theta, expected.fields)
    rotary = rotary_of(raw)
    assert rotary.rope_type == expected.rope_type
    if expected.rope_type == "default":
        assert torch.allclose(rotary.inv_freq, plain_inv_freq(expected.theta), rtol=1e-6, atol=0)
    if expected.rope_type == "linear":
        assert torch.allclose(rotary.inv_freq, plain_inv_freq(expected.theta) / 2.0, rtol=1e-6, atol=0)
    check_rotary_embedding(rotary, rope, HEAD_DIM, "config.json")  # the guard accepts what it should


def test_the_same_rope_in_either_form_gives_the_same_frequencies(tiny16_dir: Path) -> None:
    pairs = [("transformers 4 (released configs)", "transformers 5"), ("yarn, transformers 4", "yarn, transformers 5")]
    for one, other in pairs:
        a = rotary_of({**tiny_raw(tiny16_dir), **json.loads(json.dumps(FORMS[one][0]))})
        b = rotary_of({**tiny_raw(tiny16_dir), **json.loads(json.dumps(FORMS[other][0]))})
        assert torch.equal(a.inv_freq, b.inv_freq) and a.attention_scaling == b.attention_scaling, (one, other)


def test_a_transformers5_config_loads_with_its_theta(tiny16_transformers5_dir: Path) -> None:
    configs = read_configs(tiny16_transformers5_dir)
    assert configs.rope == Rope("default", 1e6, {}, "rope_parameters")
    pipe = BitDancePipeline.from_pretrained(tiny16_transformers5_dir)
    assert pipe.llm.rotary_emb.rope_type == "default"
    assert torch.allclose(pipe.llm.rotary_emb.inv_freq, plain_inv_freq(1e6), rtol=1e-6, atol=0)


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "dynamic": (
        {"rope_theta": 1e6, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
        "RoPE type 'dynamic' is not supported: its frequencies follow the longest position in the batch",
    ),
    "longrope": (
        {
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 1e6,
                "short_factor": [1.0] * 8,
                "long_factor": [2.0] * 8,
                "original_max_position_embeddings": 4096,
            }
        },
        "RoPE type 'longrope' is not supported",
    ),  # fmt: skip
    "unknown type": (
        {"rope_parameters": {"rope_type": "spiral", "rope_theta": 1e6}},
        "unknown RoPE type 'spiral' (supported: default, linear, llama3, yarn)",
    ),
    "two thetas": (
        {"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}},
        "the RoPE theta disagrees between fields (rope_parameters.rope_theta 1000000.0, rope_theta 10000.0)",
    ),
    "two types": (
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "default"}},
        "the RoPE type disagrees between fields (rope_parameters 'default', rope_scaling 'linear')",
    ),
    "two factors": (
        {
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "rope_parameters": {"rope_type": "linear", "factor": 4.0},
        },
        "RoPE field factor disagrees between rope_parameters (4.0) and rope_scaling (2.0)",
    ),  # fmt: skip
    "layer types disagree": (
        {
            "rope_parameters": {
                "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
            }
        },
        "rope_parameters differ between layer types",
    ),  # fmt: skip
    "a field the type lacks": (
        {"rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 2.0, "beta_fast": 32}},
        "RoPE field(s) beta_fast not understood for type 'linear'",
    ),
    "yarn without its original length": (
        {"rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        "RoPE type 'yarn' needs field(s) original_max_position_embeddings",
    ),
    "rope_scaling not an object": ({"rope_scaling": "linear"}, "rope_scaling must be an object or null"),
    "theta not a number": ({"rope_theta": "1e6"}, "rope_theta must be a positive number, got '1e6'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_rope_the_pipeline_cannot_honour_is_refused(
    case: str, tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, reason = REFUSED[case]
    checkpoint = copy_with_rope(tiny16_dir, tmp_path, keys)
    with pytest.raises(CheckpointError) as raised:
        BitDancePipeline.from_pretrained(checkpoint)
    assert f"config.json: {reason}" in str(raised.value)
    assert verify_main([str(checkpoint)]) == 1
    assert f"config.json: {reason}" in capsys.readouterr().out


def test_refusal_names_the_diffusers_text_encoder_config(tiny16_diffusers_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny16_diffusers_dir, checkpoint)
    config = checkpoint / "text_encoder" / "config.json"
    dynamic = {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    config.write_text(json.dumps({**json.loads(config.read_text()), **dynamic}))
    problems = verify_checkpoint(checkpoint).problems
    assert any(line.startswith("text_encoder/config.json: RoPE type 'dynamic' is not supported") for line in problems)


def test_guard_refuses_a_rotary_embedding_with_another_theta(tiny16_dir: Path) -> None:
    """What transformers 4.57 built from a transformers 5 config before the mapping: theta 10000, not 1e6."""
    misread = rotary_of({**tiny_raw(tiny16_dir), "rope_theta": 10000.0})
    with pytest.raises(CheckpointError) as raised:
        check_rotary_embedding(misread, Rope("default", 1e6), HEAD_DIM, "config.json")
    assert str(raised.value) == (
        "config.json: the installed transformers computes RoPE with theta 10000, but the config asks for "
        "default, theta 1000000"
    )


def test_guard_refuses_a_rotary_embedding_of_another_type(tiny16_dir: Path) -> None:
    scaling = {"rope_type": "linear", "factor": 2.0}
    linear = rotary_of({**tiny_raw(tiny16_dir), "rope_theta": 1e6, "rope_scaling": scaling})
    with pytest.raises(CheckpointError, match="built RoPE type 'linear', but the config asks for default"):
        check_rotary_embedding(linear, Rope("default", 1e6), HEAD_DIM, "config.json")
    with pytest.raises(CheckpointError, match="computes RoPE with theta"):  # linear's frequencies are checked too
        check_rotary_embedding(linear, Rope("linear", 1e6, {"factor": 4.0}), HEAD_DIM, "config.json")


@pytest.mark.parametrize(
    ("fixture", "source"),
    [("tiny16_dir", "rope_theta + rope_scaling"), ("tiny16_transformers5_dir", "rope_parameters")],
)
def test_verify_reports_the_rope(
    fixture: str, source: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify_main([str(request.getfixturevalue(fixture))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"rope: default, theta 1000000 (from {source} in config.json)" in lines
