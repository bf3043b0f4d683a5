"""The loaded model's identity, as workers publish it in /health."""

from __future__ import annotations

import json
from pathlib import Path

from model.checkpoint.layout import TINY_MARKER, identify_checkpoint, is_random_tiny
from model.pipeline import BitDancePipeline


def test_tiny_checkpoint_is_reported_as_random(pipe16: BitDancePipeline, tiny16_dir: Path) -> None:
    identity = pipe16.identity
    assert identity.random is True and identity.simulated is False
    assert identity.parallel_num == 16 and identity.variant == "tiny-16x"
    assert identity.path == str(tiny16_dir.resolve()) and identity.name == tiny16_dir.name
    assert "noise" in identity.summary()
    assert set(identity.as_dict()) == {"name", "path", "variant", "parallel_num", "random", "simulated"}


def test_released_size_without_marker_is_not_random(tmp_path: Path) -> None:
    folder = tmp_path / "BitDance-14B-64x"
    folder.mkdir()
    identity = identify_checkpoint(folder, 64, 5120, 40)
    assert identity.random is False and identity.variant == "14B-64x" and identity.name == "BitDance-14B-64x"
    assert "noise" not in identity.summary()
    assert identify_checkpoint(folder, 16, 1024, 8).variant == "custom-16x"
    (folder / TINY_MARKER).write_text(json.dumps({"random": True}))
    assert is_random_tiny(folder) and identify_checkpoint(folder, 64, 64, 2).variant == "tiny-64x"
