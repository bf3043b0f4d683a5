"""The real, simulated and test pipelines implement ``model.interface.Pipeline``, the worker's contract.

``isinstance`` with the ``runtime_checkable`` Protocol sees the members; the signature check sees
what ``isinstance`` cannot: every parameter of the contract with its kind, default and type, and
only optional extras. So a pipeline whose ``generate_batch`` drifts from what the worker calls
fails here (mypy checks the same statically where the worker is handed one).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from model.generation_request import GenerationRequest
from model.interface import ModelIdentity, Pipeline, PipelineOutput
from model.resolutions import supported_sizes
from model.simulated.profile import load_profile
from model.simulated.simulated_pipeline import SimulatedPipeline
from tests.unit.worker.fakes import FakePipeline


def signature_drift(method: Callable[..., Any]) -> list[str]:
    """How ``method`` departs from ``Pipeline.generate_batch``: one line per difference (none: it conforms)."""
    contract, implemented = inspect.signature(Pipeline.generate_batch), inspect.signature(method)
    wanted, given = typing.get_type_hints(Pipeline.generate_batch), typing.get_type_hints(method)
    drift = []
    for name, parameter in contract.parameters.items():
        other = implemented.parameters.get(name)
        if other is None:
            drift.append(f"{name}: missing")
            continue
        if other.kind != parameter.kind:
            drift.append(f"{name}: {other.kind.description}, the contract has {parameter.kind.description}")
        if other.default != parameter.default:
            drift.append(f"{name}: default {other.default!r}, the contract has {parameter.default!r}")
        if name != "self" and given.get(name) != wanted[name]:
            drift.append(f"{name}: annotated {given.get(name)}, the contract has {wanted[name]}")
    for name, other in implemented.parameters.items():
        if name not in contract.parameters and (
            other.default is inspect.Parameter.empty or other.kind != other.KEYWORD_ONLY
        ):
            drift.append(f"{name}: an extra parameter the worker would not pass (needs a keyword-only default)")
    returned = given.get("return")
    if not (isinstance(returned, type) and issubclass(returned, PipelineOutput)):
        drift.append(f"return: {returned}, not a PipelineOutput")
    return drift


@pytest.fixture(params=["real", "simulated", "fake"])
def pipeline(request: pytest.FixtureRequest) -> object:
    if request.param == "real":
        return request.getfixturevalue("pipe16")
    if request.param == "simulated":
        return SimulatedPipeline(load_profile("flat-2s"), speed=1e6)
    return FakePipeline()


def test_each_pipeline_implements_the_contract(pipeline: object) -> None:
    assert isinstance(pipeline, Pipeline)
    assert signature_drift(type(pipeline).generate_batch) == []
    assert isinstance(pipeline.identity, ModelIdentity) and pipeline.identity.parallel_num == pipeline.parallel_num


def test_each_pipeline_returns_a_pipeline_output(pipeline: Pipeline) -> None:
    request = GenerationRequest("a red fox", seed=3, guidance_scale=1.0, num_images=2)
    height, width = min(supported_sizes(pipeline.parallel_num), key=lambda size: size[0] * size[1])
    steps: list[int] = []
    output = pipeline.generate_batch(
        [request], height=height, width=width, num_inference_steps=1, progress=lambda done, _: steps.append(done)
    )
    assert isinstance(output, PipelineOutput)
    assert [len(images) for images in output.images] == [2] and steps and steps[-1] == max(steps)


def test_the_check_catches_a_drifted_pipeline() -> None:
    class Drifted:
        parallel_num = 16
        identity = ModelIdentity("drifted", "", "custom-16x", 16)

        def generate_batch(  # steps renamed, no stop check, a new required flag
            self, requests: list[GenerationRequest], height: int, width: int, steps: int = 25, *, fast: bool
        ) -> list[object]:
            return []

    assert isinstance(Drifted(), Pipeline)  # members present: isinstance alone cannot tell
    drift = "\n".join(signature_drift(Drifted.generate_batch))
    for problem in ("requests: annotated", "height: positional or keyword", "num_inference_steps: missing",
                    "should_stop: missing", "fast: an extra parameter", "return:"):  # fmt: skip
        assert problem in drift


def test_a_simulated_pipeline_names_itself_as_simulated() -> None:
    pipe = SimulatedPipeline(load_profile("flat-2s"))
    identity = pipe.identity
    assert identity.simulated is True and identity.random is False
    assert identity.parallel_num == pipe.parallel_num and identity.name == "simulated (flat-2s)"
    assert identity.path == "simulated" and "simulated" in identity.summary()
