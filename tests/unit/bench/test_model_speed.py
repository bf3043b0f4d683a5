"""``python -m bench.model_speed --full-size --scale``: the GPU benchmark's code path, run small on the CPU.

With its precision comparison: bf16 against float32 and fp8 against bf16 on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.model_speed import FULL_SIZE_CONFIGS, build_random_pipeline, main, our_fingerprints, write_random_configs
from bench.official.client import OFFICIAL_ENV
from model.checkpoint.random_weights import fill_random_


@pytest.mark.timeout(900)  # about 30 s of CPU time; generous for a loaded machine
def test_full_size_bench_runs_scaled_down_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(OFFICIAL_ENV, raising=False)
    out = tmp_path / "bench.json"
    argv = ["--devices", "cpu", "--full-size", "--scale", "0.05", "--steps", "1", "--batches", "2", "--repeats", "1"]
    assert main([*argv, "--cache-dir", str(tmp_path), "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "14B-64x scaled 0.05 on cpu: hidden 256, 2 layers" in printed
    assert "s/image" in printed and "images/s" in printed and "official comparison skipped" in printed
    (result,) = json.loads(out.read_text())["results"]
    assert (result["height"], result["width"], result["steps"]) == (1024, 1024, 1)
    for batch in ("batch_1", "batch_2"):
        assert result[batch]["seconds"] > 0
        assert set(result[batch]["stages"]) == {"llm", "head", "decoder"}
        assert result[batch]["planned_peak_bytes"] > 0
    assert result["images_per_second"]["2"] > 0 and result["peak_rss_bytes"] > 0
    # The same request in float32, bf16 and fp8 on the same random weights, compared.
    assert "vs float32: token agreement" in printed and "vs bf16: token agreement" in printed
    assert "fp8 at full size (BitDance-14B-64x, model.plan): weights 15.94 GiB vs bf16 29.87 GiB, x0.534" in printed
    precision = result["precision"]
    for pair in ("bf16_vs_float32", "fp8_vs_bf16"):
        assert 0.5 < precision[pair]["first_patch_agreement"] <= 1 and 0 < precision[pair]["token_agreement"] <= 1
        assert precision[pair]["psnr_db"] > 0 and precision[pair]["seconds_ratio"] > 0
    assert precision["bf16_vs_float32"]["decoder_psnr_db"] > 20  # the same tokens decode to nearly the same pixels
    assert precision["fp8_vs_bf16"]["decoder_psnr_db"] == float("inf")  # fp8 leaves the decoder in bf16
    assert precision["bf16_vs_float32"]["weight_bytes_ratio"] == 0.5  # every weight in 2 bytes instead of 4
    assert 0.5 < precision["fp8_vs_bf16"]["weight_bytes_ratio"] < 1  # the embeddings dominate at this scale
    assert precision["full_size"]["weight_bytes_ratio"] <= 0.55


def test_scale_one_writes_the_released_configs(tmp_path: Path) -> None:
    out = write_random_configs(tmp_path / "full", 1.0)
    for name in ("config.json", "vision_head_config.json", "ae_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((FULL_SIZE_CONFIGS / name).read_text())
    assert not list(out.glob("*.safetensors"))  # config files and a tokenizer, no weights


def test_random_weights_depend_on_the_names_only(tmp_path: Path) -> None:
    """Two processes building the same modules in any order get the same weights."""
    first, second = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    fill_random_(first, 7, "x.")
    fill_random_(second, 7, "x.")
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    fill_random_(second, 7, "y.")
    assert not torch.equal(first.weight, second.weight)
    directory = write_random_configs(tmp_path / "small", 0.05)
    one = our_fingerprints(build_random_pipeline(directory, torch.device("cpu"), seed=3))
    two = our_fingerprints(build_random_pipeline(directory, torch.device("cpu"), seed=3))
    assert one == two
