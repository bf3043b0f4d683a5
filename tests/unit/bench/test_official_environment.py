"""``bench.official.environment``: the official code's environment pins what upstream pins, and our exact torch."""

from __future__ import annotations

import pytest

from bench.official.environment import TORCH_SPEC_VARIABLE, requirements


def test_the_official_environment_pins_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TORCH_SPEC_VARIABLE, raising=False)
    pins = requirements()
    assert pins[0] == "torch==2.13.0" and "transformers==4.57.0" in pins and "einops==0.6.1" in pins
    monkeypatch.setenv(TORCH_SPEC_VARIABLE, "torch")
    with pytest.raises(ValueError, match="must pin torch"):
        requirements()
