"""``python -m worker``'s settings: a bad value (``BITDANCE_QUANTIZATION``, ``--quantization``) exits 2 naming it."""

from __future__ import annotations

import typing

import pytest

from core.settings import Settings
from model.quantization import NO_QUANTIZATION, QUANTIZATIONS
from worker.__main__ import main


def test_the_settings_offer_the_model_quantizations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITDANCE_QUANTIZATION", raising=False)
    annotation = Settings.model_fields["quantization"].annotation
    assert typing.get_args(annotation) == (NO_QUANTIZATION, *QUANTIZATIONS)
    assert Settings().quantization == NO_QUANTIZATION


def test_an_unknown_quantization_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BITDANCE_QUANTIZATION", "fp4")
    assert main(["--model", "simulated"]) == 2
    assert "error: BITDANCE_QUANTIZATION='fp4': Input should be 'none' or 'fp8'" in capsys.readouterr().err


def test_an_unknown_quantization_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "simulated", "--quantization", "int4"])
    assert exit_info.value.code == 2
    assert "argument --quantization: invalid choice: 'int4'" in capsys.readouterr().err
