"""What a worker publishes about its model with each heartbeat (shown by /health and the playground)."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from model.simulated.pipeline import SimulatedPipeline
from worker.__main__ import served_model


def test_simulated_model_is_reported_as_simulated() -> None:
    pipe = SimulatedPipeline.from_settings(Settings(_env_file=None).simulated_profile)  # type: ignore[call-arg]
    identity = served_model(pipe, Path("simulated"))
    assert identity.simulated is True and identity.random is False
    assert identity.parallel_num == pipe.parallel_num and identity.name.startswith("simulated")
    assert "simulated" in identity.summary()


def test_a_pipeline_without_identity_is_named_by_its_path() -> None:
    class Bare:
        parallel_num = 16

    identity = served_model(Bare(), Path("/srv/weights/some-16x"))
    assert (identity.name, identity.variant, identity.simulated) == ("some-16x", "custom-16x", False)
