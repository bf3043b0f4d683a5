"""``bitdance-generate`` / ``python -m model.generate``: the endpoint's inputs as flags, files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.generate import build_parser, default_threads, main
from model.pipeline import BitDancePipeline


def test_writes_the_images_the_pipeline_makes(
    tiny16_dir: Path, pipe16: BitDancePipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fox.png"
    code = main(["--model", str(tiny16_dir), "--prompt", "a red fox", "--image-size", "square",
                 "--num-inference-steps", "10", "--guidance-scale", "4", "--seed", "3", "--num-images", "2",
                 "--no-enable-safety-checker", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    paths = [Path(line) for line in captured.out.split()]
    assert paths == [tmp_path / "fox-0.png", tmp_path / "fox-1.png"]
    assert "seed 3, generated in" in captured.err and "(1 torch threads)" in captured.err
    assert "random weights" in captured.err  # says the tiny checkpoint makes noise
    expected = pipe16.generate("a red fox", 512, 512, num_inference_steps=10, guidance_scale=4, seed=3, num_images=2)
    for path, image in zip(paths, expected, strict=True):
        written = Image.open(path)
        assert written.format == "PNG" and written.size == (512, 512)
        assert np.array_equal(np.asarray(written), np.asarray(image))  # PNG: lossless, the pipeline's pixels
    assert torch.get_num_threads() == 1


def test_jpeg_with_the_safety_checker_and_data_uris(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", str(tiny16_dir), "--prompt", "a lamp", "--image-size", "384x640", "--steps", "10",
                 "--seed", "1", "--out", str(tmp_path / "lamp.jpg")]) == 0  # fmt: skip
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "lamp.jpg" and Image.open(path).format == "JPEG"
    assert Image.open(path).size == (384, 640)
    assert main(["--model", str(tiny16_dir), "--prompt", "a lamp", "--image-size", "square", "--steps", "10",
                 "--seed", "1", "--sync-mode", "--output-format", "png"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("data:image/png;base64,")


def test_bad_input_names_the_flag(tiny16_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="--num-inference-steps: Input should be greater than or equal to 10"):
        main(["--model", str(tiny16_dir), "--prompt", "x", "--num-inference-steps", "5"])


def test_threads_default_as_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITDANCE_TORCH_THREADS", raising=False)
    assert default_threads() == 1
    monkeypatch.setenv("BITDANCE_TORCH_THREADS", "3")
    assert default_threads() == 3
    args = build_parser().parse_args(["--model", "m", "--prompt", "p"])
    assert args.threads is None and args.num_inference_steps == 25 and args.enable_safety_checker is True


def test_fp8_weights_from_the_flag_or_the_setting(
    tiny16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fp8 = BitDancePipeline.from_pretrained(tiny16_dir, quantization="fp8")
    expected = np.asarray(fp8.generate("a red fox", 512, 512, num_inference_steps=10, seed=3)[0])
    common = ["--model", str(tiny16_dir), "--prompt", "a red fox", "--image-size", "square", "--steps", "10",
              "--seed", "3", "--no-enable-safety-checker", "--threads", "1"]  # fmt: skip
    assert main([*common, "--quantization", "fp8", "--out", str(tmp_path / "flag.png")]) == 0
    monkeypatch.setenv("BITDANCE_QUANTIZATION", "fp8")
    assert main([*common, "--out", str(tmp_path / "setting.png")]) == 0
    capsys.readouterr()
    for name in ("flag.png", "setting.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / name)), expected)


def test_an_unknown_quantization_exits_2_naming_it(
    tiny16_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny16_dir), "--prompt", "x", "--quantization", "fp4"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp4'" in capsys.readouterr().err
    monkeypatch.setenv("BITDANCE_QUANTIZATION", "fp4")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny16_dir), "--prompt", "x"])
    assert exit_info.value.code == 2
    assert "error: BITDANCE_QUANTIZATION='fp4': Input should be 'none' or 'fp8'" in capsys.readouterr().err
