"""The seed policy, in one place (torch-free, so the worker can pick seeds before generating).

A seed is an integer in ``0 .. MAX_SEED`` (what ``torch.Generator.manual_seed`` accepts, and the
API's bound on ``seed``). A request without one gets a random seed below ``RANDOM_SEED_RANGE``,
drawn once and reported back, so the images can be reproduced.
"""

from __future__ import annotations

import secrets

MAX_SEED = 2**63 - 1
RANDOM_SEED_RANGE = 2**31


def random_seed() -> int:
    """A fresh seed for a request that gave none."""
    return secrets.randbelow(RANDOM_SEED_RANGE)


def resolve_seed(seed: int | None) -> int:
    """The seed a request generates with: its own, else a fresh random one."""
    return seed if seed is not None else random_seed()


def check_seed(seed: int | None) -> None:
    """``ValueError`` for a seed outside ``0 .. MAX_SEED`` (None is fine: a random one is drawn)."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
