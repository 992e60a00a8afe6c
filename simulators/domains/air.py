"""Indoor air of public places: CO2 from occupancy, PM from outdoor infiltration,
formaldehyde and TVOC decaying after a renovation, temperature and humidity."""

from __future__ import annotations

import math
from random import Random
from typing import ClassVar

from simulators.domains.base import (
    DomainModel,
    Excursion,
    MetricBehaviour,
    ModelEvent,
    daily,
    ou,
    relax,
)
from simulators.model import local_hour

_DAY_S = 86400.0


def occupancy(profile: str, hour: float) -> float:
    """Share of the venue's capacity present (0-1) at a local hour."""
    if profile == "sleeping":  # hotel rooms, bath-house rest rooms: full at night
        return 0.9 if hour >= 22.0 or hour < 8.0 else 0.25
    if not 9.0 <= hour < 21.0:
        return 0.0
    lunch = math.exp(-(((hour - 12.5) / 1.5) ** 2))
    evening = math.exp(-(((hour - 19.0) / 1.5) ** 2))
    return 0.25 + 0.75 * max(lunch, evening)


class AirModel(DomainModel):
    """A multi-parameter indoor-air monitor in a public place."""

    domain = "air"
    profiles = (("general", 0.8), ("sleeping", 0.2))
    default_interval_s: ClassVar[dict[str, int]] = {"general": 60, "sleeping": 60}
    site_kind = "public_place"
    devices_per_site = 3
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "co2_ppm": MetricBehaviour("co2_ppm", 0, 800.0, 40.0, (-1.0, 25000.0)),
        "pm25_ugm3": MetricBehaviour("pm25_ugm3", 0, 150.0, 3.0, (-1.0, 5000.0)),
        "pm10_ugm3": MetricBehaviour("pm10_ugm3", 0, 200.0, 4.0, (-1.0, 5000.0)),
        "hcho_mgm3": MetricBehaviour("hcho_mgm3", 3, 0.2, 0.004, (-0.1, 20.0)),
        "tvoc_mgm3": MetricBehaviour("tvoc_mgm3", 2, 1.0, 0.03, (-1.0, 60.0)),
        "temp_c": MetricBehaviour("temp_c", 1, 6.0, 0.2, (-50.0, 99.0)),
        "rh_pct": MetricBehaviour("rh_pct", 1, 20.0, 1.0, (-1.0, 120.0)),
        "co_mgm3": MetricBehaviour("co_mgm3", 2, 5.0, 0.1, (-1.0, 600.0)),
    }
    excursions = (
        # Ventilation failure.
        Excursion(
            "ventilation", "co2_ppm", 1900, 3000, 1200, 1800, 4 * 3600, "air.co2_high", ("general",)
        ),
        Excursion(
            "ventilation",
            "co2_ppm",
            1300,
            2200,
            1200,
            1800,
            4 * 3600,
            "air.co2_high",
            ("sleeping",),
        ),
        # New furniture or a fresh coat of paint.
        Excursion("furniture", "hcho_mgm3", 0.15, 0.35, 3600, 2 * 3600, 12 * 3600, "air.hcho_high"),
        Excursion("painting", "tvoc_mgm3", 0.9, 2.0, 1800, 2 * 3600, 12 * 3600, "air.tvoc_high"),
        # A haze episode leaking in.
        Excursion("haze", "pm25_ugm3", 130, 280, 3600, 4 * 3600, 30 * 3600, "air.pm25_high"),
    )
    max_substep_s = 60.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.co2_gain = rng.uniform(500, 850) if profile == "general" else rng.uniform(250, 420)
        self.co2 = 450.0
        self.outdoor_mean = rng.uniform(25.0, 45.0)
        self.outdoor_pm = self.outdoor_mean
        self.pm10_ratio = rng.uniform(1.4, 1.8)
        self.infiltration = rng.uniform(0.45, 0.6)
        # Renovated some months ago; emissions decay over months.
        self.reno_amp = rng.uniform(0.01, 0.035)
        self.reno_tau_s = rng.uniform(60, 180) * _DAY_S
        self.reno_age_s = rng.uniform(0, 120) * _DAY_S
        self.t0 = t0
        self.temp_mean = rng.uniform(21.5, 24.0)
        self.temp_dev = 0.0
        self.rh = rng.uniform(40.0, 60.0)
        self.occ = occupancy(profile, local_hour(t0))
        self.hour = local_hour(t0)

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        hour = local_hour(t)
        self.occ = occupancy(self.profile, hour)
        self.co2 = relax(self.co2, 420.0 + self.co2_gain * self.occ, 1200.0, dt)
        self.outdoor_pm = max(3.0, ou(self.outdoor_pm, self.outdoor_mean, 12.0, 6 * 3600, dt, rng))
        self.temp_dev = ou(self.temp_dev, 0.0, 0.4, 3600, dt, rng)
        self.rh = ou(self.rh, 50.0, 6.0, 4 * 3600, dt, rng)
        self.hour = hour

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        temp = self.temp_mean + 1.2 * daily(self.hour, 15.0) + self.temp_dev
        age = self.reno_age_s + (self.t - self.t0)
        reno = self.reno_amp * math.exp(-age / self.reno_tau_s)
        # Emission rises with temperature (about 3 % per °C).
        warm = 1.0 + 0.03 * (temp - 22.0)
        pm25 = max(1.0, self.infiltration * self.outdoor_pm + 8.0 * self.occ + g(0, 2.0))
        return {
            "temp_c": temp + g(0, 0.05),
            "rh_pct": self.rh + g(0, 0.5),
            "co2_ppm": max(380.0, self.co2 + g(0, 12.0)),
            "pm25_ugm3": pm25,
            "pm10_ugm3": pm25 * self.pm10_ratio + abs(g(0, 3.0)),
            "hcho_mgm3": max(0.002, (0.015 + reno) * warm + g(0, 0.003)),
            "tvoc_mgm3": max(0.01, (0.08 + 6.0 * reno) * warm + 0.05 * self.occ + g(0, 0.02)),
            "co_mgm3": max(0.05, 0.4 + 0.6 * self.occ + g(0, 0.08)),
            "air_speed_ms": max(0.01, 0.08 + 0.05 * self.occ + g(0, 0.02)),
        }
