"""What every domain model provides: clean physics, and the fault targets of its metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random
from typing import Any, ClassVar

# An event a model emits: (event time, type, extra fields).
ModelEvent = tuple[float, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class MetricBehaviour:
    """How faults act on one metric."""

    name: str
    decimals: int
    spike: float  # size of a noise spike (added with a random sign)
    drift_per_h: float  # signed: drift goes towards the limit a supervisor watches
    bad_values: tuple[float, ...]  # what a broken sensor reports, outside the physical range


@dataclass(frozen=True, slots=True)
class Excursion:
    """A threshold excursion: the metric is pulled towards a level beyond the limit."""

    variant: str
    metric: str
    low: float
    high: float
    tau_s: float  # time constant of the approach and of the recovery
    min_s: float
    max_s: float
    rule_id: str | None
    profiles: tuple[str, ...] = ()


class DomainModel:
    """Base of the per-domain device physics. Deterministic given its `rng`.

    `advance(t)` moves the physics to simulated time t and returns the events that
    happened; `read()` gives the clean sensor values at t (measurement noise included);
    `derive(values)` recomputes outputs that follow others (pool ORP from chlorine) after
    a fault changed them.
    """

    domain: ClassVar[str]
    profiles: ClassVar[tuple[tuple[str, float], ...]]  # (profile, share of a fleet)
    default_interval_s: ClassVar[dict[str, int]]
    site_kind: ClassVar[str]
    devices_per_site: ClassVar[int] = 4
    behaviours: ClassVar[dict[str, MetricBehaviour]]
    excursions: ClassVar[tuple[Excursion, ...]]
    max_substep_s: ClassVar[float] = 30.0
    derived: ClassVar[tuple[str, ...]] = ()  # outputs `derive` recomputes from others
    # Natural store-and-forward: coverage gaps per hour (cold boxes in transport).
    coverage_gaps_per_h: float = 0.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        self.device_id = ""  # set by the device before the first step
        self.profile = profile
        self.rng = rng
        self.t = t0

    def advance(self, t: float) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        while self.t < t:
            dt = min(self.max_substep_s, t - self.t)
            self.t += dt
            self.step(self.t, dt, events)
        return events

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        raise NotImplementedError

    def read(self) -> dict[str, float]:
        raise NotImplementedError

    def derive(self, values: dict[str, float | None]) -> None:
        """Recompute coupled outputs in place. Default: none."""
        return None

    def fault_metrics(self) -> tuple[str, ...]:
        """Metrics that value faults (drift, stuck, spike, out of range) may hit."""
        return tuple(m for m in self.read() if m in self.behaviours)

    def excursions_for_profile(self) -> tuple[Excursion, ...]:
        return tuple(e for e in self.excursions if not e.profiles or self.profile in e.profiles)

    def set_power(self, ok: bool, t: float) -> list[ModelEvent]:
        """Mains power (cold chain only). Returns the events it causes."""
        return []


def ou(x: float, mean: float, sd: float, tau_s: float, dt: float, rng: Random) -> float:
    """One Ornstein-Uhlenbeck step: mean-reverting noise with stationary deviation `sd`."""
    a = math.exp(-dt / tau_s)
    return mean + (x - mean) * a + sd * math.sqrt(1.0 - a * a) * rng.gauss(0.0, 1.0)


def relax(x: float, target: float, tau_s: float, dt: float) -> float:
    """First-order approach of x towards target."""
    return target + (x - target) * math.exp(-dt / tau_s)


def daily(hour: float, peak_hour: float) -> float:
    """A smooth daily cycle in [-1, 1] with its maximum at `peak_hour` (local)."""
    return math.cos((hour - peak_hour) / 24.0 * 2.0 * math.pi)
