"""Euler–Maruyama sampling of the diffusion head with classifier-free guidance: pure tensor code.

The equations, constants and the order of floating-point operations follow the official sampler
(``modeling/vision_head/sampling_x.py``): ``t`` runs over ``linspace(0, 1 - last_step_size, N + 1)``
passed through the time shift, accumulates in float32, the velocity is ``(x1_pred - x)/(1 - t)``
clamped at 0.05, the drift adds the score term, and one last Euler step of ``last_step_size``
finishes at ``t = 0.95 -> 1``.

Several requests can be sampled together. Each has its own images, guidance scale and noise
generator. The head rows of one request are laid out as in the official code, ``[cond; uncond]``
(uncond only when its guidance scale is above 1), and requests follow one another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LAST_STEP_SIZE = 0.05
MIN_ONE_MINUS_T = 0.05


def time_shift(t: torch.Tensor, shift: float = 1.0, sigma: float = 1.0) -> torch.Tensor:
    """The official time shift ``(1/s) / ((1/s) + (1/t - 1)**sigma)``, applied even when ``s == 1``."""
    return (1 / shift) / ((1 / shift) + (1 / t - 1) ** sigma)


def step_sizes(
    num_inference_steps: int,
    shift: float = 1.0,
    last_step_size: float = LAST_STEP_SIZE,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``dt`` of each Euler–Maruyama step, float32 ``(num_inference_steps,)``, computed on ``device`` as upstream."""
    t_all = torch.linspace(0, 1 - last_step_size, num_inference_steps + 1, dtype=torch.float32, device=device)
    t_all = time_shift(t_all, shift)
    return t_all[1:] - t_all[:-1]


def uses_guidance(guidance_scale: float) -> bool:
    """Classifier-free guidance is on only above 1, as in the official pipeline."""
    return guidance_scale > 1.0


@dataclass(frozen=True)
class GuidanceLayout:
    """Where each image's conditional and unconditional rows sit among the head's rows.

    ``images`` is the number of images (rows of the sample ``x``); ``rows`` the number of head rows.
    """

    images_per_request: tuple[int, ...]
    scales: tuple[float, ...]
    expand_index: torch.Tensor  # (rows,) head row -> image row of x
    cond_rows: torch.Tensor  # (images,) head row of each image's conditional branch
    uncond_rows: torch.Tensor  # (images,) head row of its unconditional branch (its cond row if unguided)
    is_guided: torch.Tensor  # (images, 1, 1) bool
    scale: torch.Tensor  # (images, 1, 1) float32

    @classmethod
    def build(
        cls, images_per_request: Sequence[int], scales: Sequence[float], device: torch.device | str = "cpu"
    ) -> GuidanceLayout:
        expand: list[int] = []
        cond: list[int] = []
        uncond: list[int] = []
        guided: list[bool] = []
        scale: list[float] = []
        image = 0
        for count, g in zip(images_per_request, scales, strict=True):
            first_row = len(expand)
            images = list(range(image, image + count))
            branches = 2 if uses_guidance(g) else 1
            expand.extend(images * branches)
            cond.extend(range(first_row, first_row + count))
            offset = count if branches == 2 else 0
            uncond.extend(range(first_row + offset, first_row + offset + count))
            guided.extend([branches == 2] * count)
            scale.extend([float(g)] * count)
            image += count
        as_long = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return cls(
            images_per_request=tuple(images_per_request),
            scales=tuple(float(g) for g in scales),
            expand_index=as_long(expand),
            cond_rows=as_long(cond),
            uncond_rows=as_long(uncond),
            is_guided=torch.tensor(guided, dtype=torch.bool, device=device).view(-1, 1, 1),
            scale=torch.tensor(scale, dtype=torch.float32, device=device).view(-1, 1, 1),
        )

    @property
    def any_guided(self) -> bool:
        return any(uses_guidance(g) for g in self.scales)

    @property
    def all_guided(self) -> bool:
        return all(uses_guidance(g) for g in self.scales)

    @property
    def num_images(self) -> int:
        return sum(self.images_per_request)

    @property
    def num_rows(self) -> int:
        return int(self.expand_index.numel())

    def rows_per_request(self) -> list[int]:
        return [n * (2 if uses_guidance(g) else 1) for n, g in zip(self.images_per_request, self.scales, strict=True)]

    def guide(self, velocity: torch.Tensor) -> torch.Tensor:
        """``u + g (c - u)`` for guided images, ``c`` for the others: ``(rows, P, C)`` -> ``(images, P, C)``."""
        cond = velocity.index_select(0, self.cond_rows)
        if not self.any_guided:
            return cond
        uncond = velocity.index_select(0, self.uncond_rows)
        guided = uncond + self.scale * (cond - uncond)
        return guided if self.all_guided else torch.where(self.is_guided, guided, cond)


class NoiseSource:
    """Gaussian noise for every image, each request drawing from its own ``torch.Generator``.

    A request's draws depend only on its generator, so its samples are the same alone or in a batch.
    A generator seeded with ``s`` on a device draws exactly what ``torch.manual_seed(s)`` makes that
    device's default generator draw, which is where upstream's sampler draws from (``torch.randn``
    on the head's device). Draws are made on the generator's device, then moved to ``device``.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        images_per_request: Sequence[int],
        tail_shape: tuple[int, ...],
        device: torch.device | str = "cpu",
    ):
        self.generators = list(generators)
        self.images_per_request = list(images_per_request)
        self.tail_shape = tail_shape
        self.device = torch.device(device)

    def draw(self) -> torch.Tensor:
        parts = [
            torch.randn((count, *self.tail_shape), generator=generator, dtype=torch.float32, device=generator.device)
            for generator, count in zip(self.generators, self.images_per_request, strict=True)
        ]
        sample = parts[0] if len(parts) == 1 else torch.cat(parts)
        return sample.to(self.device)


@dataclass(frozen=True)
class SamplerStep:
    """The time-only quantities of one head evaluation, as 0-d float32 tensors on the device.

    ``index`` counts the evaluations of one patch (``0 .. num_inference_steps``); the last one is the final
    Euler step, a plain :class:`SamplerStep`; the others are :class:`StochasticStep`.
    """

    index: int
    t: torch.Tensor
    one_minus_t: torch.Tensor
    velocity_divisor: torch.Tensor  # (1 - t) clamped at MIN_ONE_MINUS_T


@dataclass(frozen=True)
class StochasticStep(SamplerStep):
    """An Euler–Maruyama step: also its step size, the flow's variance and the noise scale."""

    dt: torch.Tensor
    var: torch.Tensor
    noise_scale: torch.Tensor


@dataclass(frozen=True)
class SamplerSchedule:
    """Every quantity that depends only on time, computed once per generation instead of per patch.

    The values are the very tensors the step-by-step recurrence produces (``t`` accumulated by
    repeated float32 adds of ``dt``), so hoisting them changes no bit of the samples.
    """

    steps: tuple[StochasticStep, ...]
    final: SamplerStep
    last_step_size: float

    @classmethod
    def build(
        cls,
        num_inference_steps: int,
        shift: float = 1.0,
        last_step_size: float = LAST_STEP_SIZE,
        device: torch.device | str = "cpu",
    ) -> SamplerSchedule:
        dts = step_sizes(num_inference_steps, shift, last_step_size, device)
        t = torch.tensor(0.0, dtype=torch.float32, device=device)
        steps: list[StochasticStep] = []
        for i in range(num_inference_steps):
            dt = dts[i]
            one_minus_t = 1 - t
            steps.append(
                StochasticStep(
                    index=i,
                    t=t,
                    one_minus_t=one_minus_t,
                    velocity_divisor=one_minus_t.clamp_min(MIN_ONE_MINUS_T),
                    dt=dt,
                    var=(1 - t) ** 2 - t * -1 * (1 - t),
                    noise_scale=(2.0 * (1.0 - t) * dt) ** 0.5,
                )
            )
            t = t + dt
        t_last = torch.tensor(1 - last_step_size, dtype=torch.float32, device=device)
        final = SamplerStep(
            index=num_inference_steps,
            t=t_last,
            one_minus_t=1 - t_last,
            velocity_divisor=(1 - t_last).clamp_min(MIN_ONE_MINUS_T),
        )
        return cls(tuple(steps), final, last_step_size)

    @property
    def evaluations(self) -> tuple[SamplerStep, ...]:
        """Every head evaluation of one patch, in order."""
        return (*self.steps, self.final)


def euler_maruyama_step(x: torch.Tensor, v: torch.Tensor, step: StochasticStep, noise: torch.Tensor) -> torch.Tensor:
    """One stochastic step of the flow ``x_t = t x1 + (1 - t) x0``; float32 throughout."""
    score = (step.t * v - x) / step.var
    drift = v + step.one_minus_t * score
    return x + drift * step.dt + step.noise_scale * noise


Denoiser = Callable[[torch.Tensor, SamplerStep], torch.Tensor]
"""``denoise(x_rows (rows, P, C), step) -> predicted x1 (rows, P, C)``; ``step.t`` is the time."""


def guided_velocity(denoise: Denoiser, x: torch.Tensor, step: SamplerStep, layout: GuidanceLayout) -> torch.Tensor:
    rows = x.index_select(0, layout.expand_index)
    predicted = denoise(rows, step)
    velocity = (predicted - rows) / step.velocity_divisor
    return layout.guide(velocity.to(torch.float32))


def euler_maruyama(
    denoise: Denoiser, layout: GuidanceLayout, noise: NoiseSource, schedule: SamplerSchedule
) -> torch.Tensor:
    """Sample ``(images, P, C)`` with the schedule's Euler–Maruyama steps and its final Euler step.

    Noise is drawn as the official sampler draws it: the initial ``x`` first, then one draw per
    stochastic step, none for the final step.
    """
    x = noise.draw()
    for step in schedule.steps:
        v = guided_velocity(denoise, x, step, layout)
        x = euler_maruyama_step(x, v, step, noise.draw())
    v = guided_velocity(denoise, x, schedule.final, layout)
    return x + v * schedule.last_step_size
