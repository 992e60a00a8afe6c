"""Drinking water: plant outlet, tap (末梢水) and secondary-supply tank (二次供水).

Free chlorine is held at the plant by a dosing controller, decays first-order with
residence time in the network (longest at night, when demand is low), and in a
secondary-supply tank decays between refills until the tank's doser tops it up.
"""

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


class WaterModel(DomainModel):
    """A multi-parameter drinking-water analyser."""

    domain = "water"
    profiles = (("plant_outlet", 0.2), ("tap", 0.5), ("secondary_supply", 0.3))
    default_interval_s: ClassVar[dict[str, int]] = {
        "plant_outlet": 60,
        "tap": 60,
        "secondary_supply": 60,
    }
    site_kind = "water_plant"
    devices_per_site = 5
    derived = ("total_chlorine_mgl",)
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "free_chlorine_mgl": MetricBehaviour("free_chlorine_mgl", 2, 0.8, -0.03, (-0.5, 25.0)),
        "turbidity_ntu": MetricBehaviour("turbidity_ntu", 2, 3.0, 0.05, (-1.0, 1500.0)),
        "ph": MetricBehaviour("ph", 2, 1.5, -0.05, (-1.0, 15.0)),
        "conductivity_uscm": MetricBehaviour("conductivity_uscm", 0, 300.0, 10.0, (-1.0, 30000.0)),
        "water_temp_c": MetricBehaviour("water_temp_c", 1, 8.0, 0.2, (-10.0, 120.0)),
        "total_chlorine_mgl": MetricBehaviour("total_chlorine_mgl", 2, 0.8, -0.03, (-0.5, 25.0)),
    }
    excursions = (
        # Dosing failure.
        Excursion(
            "dosing_failure",
            "free_chlorine_mgl",
            0.05,
            0.22,
            1800,
            1800,
            6 * 3600,
            "water.free_chlorine_low",
            ("plant_outlet",),
        ),
        Excursion(
            "dosing_failure",
            "free_chlorine_mgl",
            0.0,
            0.03,
            1800,
            1800,
            6 * 3600,
            "water.free_chlorine_low",
            ("tap", "secondary_supply"),
        ),
        # Pipe works stirring up sediment.
        Excursion(
            "pipe_works", "turbidity_ntu", 1.5, 8.0, 900, 1200, 4 * 3600, "water.turbidity_high"
        ),
        Excursion("ph_low", "ph", 5.8, 6.3, 1800, 1800, 4 * 3600, "water.ph_range"),
        Excursion("ph_high", "ph", 8.7, 9.2, 1800, 1800, 4 * 3600, "water.ph_range"),
    )
    max_substep_s = 60.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.outlet_sp = rng.uniform(0.6, 0.9)
        self.chlorine = self.outlet_sp
        # Network decay: k * residence time between 0.5 and 1.2 at mean demand.
        self.decay_at_mean = rng.uniform(0.5, 1.2)
        self.combined = rng.uniform(0.1, 0.25)
        self.tank_k_per_s = rng.uniform(0.03, 0.06) / 3600
        self.dosing = False
        self.turb_base = rng.uniform(0.08, 0.25)
        self.turb = self.turb_base
        self.turb_spike = 0.0
        self.ph_mean = rng.uniform(7.0, 7.8)
        self.ph = self.ph_mean
        self.cond_mean = rng.uniform(250.0, 650.0)
        self.cond = self.cond_mean
        doy = (t0 / 86400.0) % 365.25
        self.temp_mean = 15.0 + 8.0 * math.cos((doy - 200.0) / 365.25 * 2.0 * math.pi)
        self.temp = self.temp_mean
        self.hour = local_hour(t0)

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        self.hour = hour = local_hour(t)
        if self.profile == "plant_outlet":
            self.chlorine = ou(self.chlorine, self.outlet_sp, 0.04, 1800, dt, rng)
        elif self.profile == "tap":
            # Residence time is longest around 04:00, when nobody draws water.
            decay = self.decay_at_mean * (1.0 + 0.5 * daily(hour, 4.0))
            self.chlorine = relax(
                self.chlorine, self.outlet_sp * math.exp(-decay), 1800, dt
            ) + 0.005 * rng.gauss(0, 1) * math.sqrt(dt / 60)
        else:
            # Tank: first-order decay; the doser switches on below 0.12 and off above 0.35.
            self.chlorine *= math.exp(-self.tank_k_per_s * dt)
            if self.chlorine < 0.12:
                self.dosing = True
            elif self.chlorine > 0.35:
                self.dosing = False
            if self.dosing:
                self.chlorine += 0.3 * dt / 3600
        self.chlorine = max(0.06, self.chlorine)
        # Occasional small sediment pulses (flushing, valve work) that stay under 1 NTU.
        if rng.random() < dt / 86400:
            self.turb_spike = rng.uniform(0.2, 0.5)
        self.turb_spike = relax(self.turb_spike, 0.0, 2400, dt)
        self.turb = ou(self.turb, self.turb_base, 0.03, 1800, dt, rng)
        self.ph = ou(self.ph, self.ph_mean, 0.08, 6 * 3600, dt, rng)
        self.cond = ou(self.cond, self.cond_mean, 15.0, 12 * 3600, dt, rng)
        self.temp = ou(self.temp, self.temp_mean, 0.3, 6 * 3600, dt, rng)

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        free = max(0.0, self.chlorine + g(0, 0.01))
        return {
            "free_chlorine_mgl": free,
            "total_chlorine_mgl": free + self.combined,
            "turbidity_ntu": max(0.01, self.turb + self.turb_spike + g(0, 0.01)),
            "ph": self.ph + g(0, 0.01),
            "conductivity_uscm": self.cond + g(0, 2.0),
            "water_temp_c": self.temp + 0.3 * daily(self.hour, 16.0) + g(0, 0.05),
        }

    def derive(self, values: dict[str, float | None]) -> None:
        free = values.get("free_chlorine_mgl")
        # A broken free-chlorine reading says nothing about total chlorine.
        if free is not None and 0.0 <= free <= 20.0:
            values["total_chlorine_mgl"] = free + self.combined
