"""Capped exponential backoff with jitter, in one place; tests shrink the constants."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry `attempt` (0-based): uniform in [c/2, c], c = min(cap, base * 2^n)."""

    base_s: float = 0.2
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 30)))
        return (rng or random).uniform(ceiling / 2, ceiling)
