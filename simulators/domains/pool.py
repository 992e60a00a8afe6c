"""Swimming-pool water: bathers consume free chlorine and build up combined chlorine and
urea; a dosing controller puts chlorine back and an acid doser holds the pH; ORP tracks
free chlorine and pH."""

from __future__ import annotations

import math
from random import Random
from typing import ClassVar

from simulators.domains.base import DomainModel, Excursion, MetricBehaviour, ModelEvent, ou
from simulators.model import local_hour


def bathers(hour: float) -> float:
    """Share of the pool's bather capacity in the water (0-1), open 06:00-22:00."""
    if not 6.0 <= hour < 22.0:
        return 0.0
    morning = math.exp(-(((hour - 7.5) / 1.0) ** 2))
    noon = math.exp(-(((hour - 12.5) / 1.2) ** 2))
    evening = math.exp(-(((hour - 19.0) / 1.8) ** 2))
    return 0.15 + 0.85 * max(0.6 * morning, 0.5 * noon, evening)


def orp_mv(free_chlorine: float, ph: float) -> float:
    """ORP of chlorinated water: rises with log free chlorine, falls with pH."""
    return 700.0 + 150.0 * math.log10(max(free_chlorine, 0.01) / 0.5) - 50.0 * (ph - 7.4)


class PoolModel(DomainModel):
    """An online pool-water analyser at an indoor pool."""

    domain = "pool"
    profiles = (("indoor", 1.0),)
    default_interval_s: ClassVar[dict[str, int]] = {"indoor": 60}
    site_kind = "pool"
    devices_per_site = 2
    derived = ("orp_mv",)
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "free_chlorine_mgl": MetricBehaviour("free_chlorine_mgl", 2, 1.0, -0.03, (-0.5, 25.0)),
        "combined_chlorine_mgl": MetricBehaviour(
            "combined_chlorine_mgl", 2, 0.5, 0.02, (-0.5, 25.0)
        ),
        "ph": MetricBehaviour("ph", 2, 1.0, 0.03, (-1.0, 15.0)),
        "urea_mgl": MetricBehaviour("urea_mgl", 2, 3.0, 0.1, (-1.0, 150.0)),
        "turbidity_ntu": MetricBehaviour("turbidity_ntu", 2, 2.0, 0.05, (-1.0, 1500.0)),
        "orp_mv": MetricBehaviour("orp_mv", 0, 150.0, -8.0, (-1200.0, 1600.0)),
        "water_temp_c": MetricBehaviour("water_temp_c", 1, 6.0, 0.2, (-10.0, 120.0)),
    }
    excursions = (
        Excursion(
            "dosing_failure",
            "free_chlorine_mgl",
            0.05,
            0.2,
            1800,
            1800,
            4 * 3600,
            "pool.free_chlorine_range",
        ),
        Excursion(
            "overdose",
            "free_chlorine_mgl",
            1.5,
            3.0,
            1200,
            1800,
            4 * 3600,
            "pool.free_chlorine_range",
        ),
        Excursion(
            "combined",
            "combined_chlorine_mgl",
            0.5,
            1.0,
            3600,
            3600,
            6 * 3600,
            "pool.combined_chlorine_high",
        ),
        Excursion("ph_low", "ph", 6.6, 6.9, 1800, 1800, 4 * 3600, "pool.ph_range"),
        Excursion("ph_high", "ph", 7.9, 8.3, 1800, 1800, 4 * 3600, "pool.ph_range"),
        Excursion("urea", "urea_mgl", 4.0, 6.0, 3600, 3600, 6 * 3600, "pool.urea_high"),
        Excursion("cloudy", "turbidity_ntu", 1.5, 4.0, 900, 1800, 3 * 3600, "pool.turbidity_high"),
        # A fouled ORP electrode reads low while the chlorine is fine.
        Excursion("orp_probe", "orp_mv", 550.0, 630.0, 1800, 1800, 4 * 3600, "pool.orp_low"),
    )
    max_substep_s = 60.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.setpoint = rng.uniform(0.6, 0.8)
        self.fc = self.setpoint
        self.cc = rng.uniform(0.05, 0.12)
        self.load = rng.uniform(0.7, 1.0)  # how busy this pool gets
        self.urea = rng.uniform(1.0, 1.6)
        self.ph = rng.uniform(7.3, 7.5)
        self.acid = False
        self.temp = rng.uniform(26.5, 28.0)
        self.occ = bathers(local_hour(t0))

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        h = dt / 3600.0
        self.occ = occ = bathers(local_hour(t)) * self.load
        # Chlorine: decay, bather demand, proportional dosing towards the setpoint.
        dose = min(1.0, max(0.0, 3.0 * (self.setpoint - self.fc)))
        self.fc += (dose - 0.05 * self.fc - 0.4 * occ) * h
        self.fc = max(0.02, self.fc)
        # Bathers make chloramines and urea; UV and fresh water take them away.
        self.cc += (0.03 * occ - self.cc / 8.0) * h
        self.cc = max(0.02, self.cc)
        self.urea += (0.22 * occ - self.urea / 24.0) * h
        # Hypochlorite dosing pushes the pH up; the acid doser pulls it back.
        if self.ph > 7.55:
            self.acid = True
        elif self.ph < 7.35:
            self.acid = False
        self.ph += (0.05 * dose - (0.12 if self.acid else 0.0)) * h + 0.003 * rng.gauss(0, 1)
        self.temp = ou(self.temp, 27.2, 0.3, 6 * 3600, dt, rng)

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        fc = max(0.0, self.fc + g(0, 0.01))
        ph = self.ph + g(0, 0.01)
        return {
            "free_chlorine_mgl": fc,
            "combined_chlorine_mgl": max(0.0, self.cc + g(0, 0.01)),
            "ph": ph,
            "urea_mgl": max(0.0, self.urea + g(0, 0.03)),
            "turbidity_ntu": max(0.02, 0.15 + 0.25 * self.occ + g(0, 0.02)),
            "orp_mv": orp_mv(fc, ph) + g(0, 3.0),
            "water_temp_c": self.temp + g(0, 0.05),
        }

    def derive(self, values: dict[str, float | None]) -> None:
        fc, ph = values.get("free_chlorine_mgl"), values.get("ph")
        if fc is not None and ph is not None and fc >= 0:
            values["orp_mv"] = orp_mv(fc, ph)
