"""The Euler–Maruyama sampler against a float64 reference of the same equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.sampler import (
    GuidanceLayout,
    NoiseSource,
    SamplerSchedule,
    SamplerStep,
    StochasticStep,
    euler_maruyama,
    step_sizes,
    time_shift,
)


def reference_sampler(denoise64, x0, noises, steps, scale, shift=1.0, last=0.05):
    """Float64 NumPy transcription of the paper's sampler for one request (cond rows first)."""
    ts = np.linspace(0.0, 1.0 - last, steps + 1)
    with np.errstate(divide="ignore"):
        ts = (1 / shift) / ((1 / shift) + (1 / ts - 1))
    x, t = x0.copy(), 0.0

    def velocity(x, t):
        guided = scale > 1.0
        rows = np.concatenate([x, x]) if guided else x
        v = (denoise64(rows, t) - rows) / max(1.0 - t, 0.05)
        if guided:
            c, u = np.split(v, 2)
            return u + scale * (c - u)
        return v

    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        v = velocity(x, t)
        score = (t * v - x) / (1.0 - t)
        x = x + (v + (1.0 - t) * score) * dt + np.sqrt(2.0 * (1.0 - t) * dt) * noises[i]
        t += dt
    return x + velocity(x, 1.0 - last) * last


def linear_denoiser(weight: np.ndarray):
    """A smooth stand-in for the head: x1 = tanh(x W + t) per row, in torch and in float64."""

    def torch_fn(rows: torch.Tensor, step: SamplerStep) -> torch.Tensor:
        return torch.tanh(rows @ torch.from_numpy(weight).float() + step.t)

    def numpy_fn(rows: np.ndarray, t: float) -> np.ndarray:
        return np.tanh(rows @ weight + t)

    return torch_fn, numpy_fn


@pytest.mark.parametrize("scale", [7.5, 1.0, 0.5])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampler_matches_float64_reference(scale: float, shift: float) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 8)) / np.sqrt(8)
    torch_fn, numpy_fn = linear_denoiser(weight)
    steps = 12
    generator = torch.Generator().manual_seed(5)
    noise = NoiseSource([generator], [2], (4, 8))
    out = euler_maruyama(torch_fn, GuidanceLayout.build([2], [scale]), noise, SamplerSchedule.build(steps, shift))

    replay = torch.Generator().manual_seed(5)
    draws = [torch.randn((2, 4, 8), generator=replay).double().numpy() for _ in range(steps + 1)]
    expected = reference_sampler(numpy_fn, draws[0], draws[1:], steps, scale, shift)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=2e-4, atol=2e-4)


def test_guidance_is_off_at_and_below_one() -> None:
    calls: list[int] = []

    def denoise(rows: torch.Tensor, step: SamplerStep) -> torch.Tensor:
        calls.append(rows.shape[0])
        return torch.tanh(rows)

    for scale in (1.0, 0.3):
        layout = GuidanceLayout.build([3], [scale])
        assert layout.num_rows == 3
        noise = NoiseSource([torch.Generator().manual_seed(1)], [3], (2, 4))
        euler_maruyama(denoise, layout, noise, SamplerSchedule.build(4))
    assert set(calls) == {3}
    guided = GuidanceLayout.build([3], [1.01])
    assert guided.num_rows == 6


def test_guidance_layout_mixes_requests() -> None:
    layout = GuidanceLayout.build([2, 1, 1], [7.5, 1.0, 2.0])
    assert layout.expand_index.tolist() == [0, 1, 0, 1, 2, 3, 3]
    assert layout.cond_rows.tolist() == [0, 1, 4, 5]
    assert layout.uncond_rows.tolist() == [2, 3, 4, 6]
    velocity = torch.arange(7, dtype=torch.float32).view(7, 1, 1)
    guided = layout.guide(velocity).flatten().tolist()
    assert guided == [2 + 7.5 * (0 - 2), 3 + 7.5 * (1 - 3), 4.0, 6 + 2.0 * (5 - 6)]


def test_time_grid_and_shift() -> None:
    dt = step_sizes(10)
    assert dt.dtype == torch.float32 and dt.shape == (10,)
    assert float(dt.sum()) == pytest.approx(0.95, abs=1e-6)
    t = torch.tensor([0.25, 0.5, 0.75])
    assert torch.allclose(time_shift(t, 1.0), t)
    assert torch.allclose(time_shift(t, 3.0), (1 / 3) / ((1 / 3) + (1 / t - 1)))
    assert float(time_shift(torch.tensor(0.0), 2.0)) == 0.0


def test_noise_source_draws_like_the_global_generator() -> None:
    torch.manual_seed(42)
    expected = [torch.randn([2, 16, 32]) for _ in range(3)]
    source = NoiseSource([torch.Generator().manual_seed(42)], [2], (16, 32))
    for want in expected:
        assert torch.equal(source.draw(), want)


def test_schedule_holds_the_recurrence_values() -> None:
    schedule = SamplerSchedule.build(10, shift=3.0)
    dt = step_sizes(10, 3.0)
    t = torch.tensor(0.0)
    for i, step in enumerate(schedule.steps):
        assert step.index == i and torch.equal(step.t, t) and torch.equal(step.dt, dt[i])
        assert torch.equal(step.velocity_divisor, (1 - t).clamp_min(0.05))
        assert torch.equal(step.noise_scale, (2.0 * (1.0 - t) * dt[i]) ** 0.5)
        t = t + dt[i]
    assert float(t) == pytest.approx(float(time_shift(torch.tensor(0.95), 3.0)), abs=1e-6)
    assert schedule.final.index == 10 and float(schedule.final.t) == pytest.approx(0.95)
    assert not isinstance(schedule.final, StochasticStep) and len(schedule.evaluations) == 11
