"""Vaccine cold chain: fridges (2-8 °C), freezers, ultra-low freezers, cold boxes in transport.

A fridge is a thermostat with hysteresis: the compressor pulls the air down at a fixed
rate, and while it is off the cabinet warms towards the room through its insulation.
Door openings pull the air towards room temperature for a minute; defrost runs a heater
for a quarter of an hour; a power cut stops the compressor and the cabinet follows the
warming curve until power returns.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class _Cabinet:
    cut_in_c: float  # compressor starts above this
    cut_out_c: float  # and stops below this
    cool_c_per_s: float
    warm_tau_s: float  # insulation: time constant towards room temperature
    door_per_h: float  # door openings per working hour
    door_tau_s: float
    defrost_every_s: float  # 0: no defrost
    defrost_s: float
    defrost_heat_c_per_s: float


_CABINETS = {
    "fridge": _Cabinet(6.0, 3.2, 0.3 / 60, 240 * 60, 1.5, 15 * 60, 7 * 3600, 15 * 60, 0.05 / 60),
    "freezer": _Cabinet(
        -19.0, -22.5, 0.3 / 60, 600 * 60, 0.5, 20 * 60, 12 * 3600, 20 * 60, 0.15 / 60
    ),
    "ultra_low": _Cabinet(-68.0, -72.0, 0.3 / 60, 1200 * 60, 0.2, 40 * 60, 0, 0, 0),
}


class ColdchainModel(DomainModel):
    """One cold-chain device; the profile picks the cabinet."""

    domain = "coldchain"
    profiles = (("fridge", 0.7), ("freezer", 0.15), ("ultra_low", 0.05), ("cold_box", 0.10))
    # GSP: readings refreshed every minute; records every 5 min in transport.
    default_interval_s: ClassVar[dict[str, int]] = {
        "fridge": 60,
        "freezer": 60,
        "ultra_low": 60,
        "cold_box": 300,
    }
    site_kind = "clinic"
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "temp_c": MetricBehaviour("temp_c", 1, 6.0, 0.25, (-127.0, 85.0)),
        "rh_pct": MetricBehaviour("rh_pct", 1, 15.0, 2.0, (-1.0, 120.0)),
        "battery_v": MetricBehaviour("battery_v", 2, 1.0, -0.05, (-1.0, 25.0)),
    }
    excursions = (
        Excursion("heat", "temp_c", 9.0, 14.0, 900, 600, 3 * 3600, "coldchain.heat", ("fridge",)),
        Excursion("cold", "temp_c", 0.5, 1.6, 900, 600, 3 * 3600, "coldchain.cold", ("fridge",)),
        Excursion(
            "freeze", "temp_c", -3.0, -0.8, 1200, 1800, 4 * 3600, "coldchain.freeze", ("fridge",)
        ),
        Excursion(
            "warm",
            "temp_c",
            -13.0,
            -6.0,
            1200,
            600,
            3 * 3600,
            "coldchain.freezer_warm",
            ("freezer",),
        ),
        Excursion(
            "warm",
            "temp_c",
            -55.0,
            -40.0,
            1200,
            600,
            3 * 3600,
            "coldchain.freezer_warm",
            ("ultra_low",),
        ),
        Excursion(
            "heat",
            "temp_c",
            9.5,
            16.0,
            900,
            600,
            3 * 3600,
            "coldchain.transport_heat",
            ("cold_box",),
        ),
    )

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.room_c = rng.uniform(20.0, 26.0)
        self.power_ok = True
        self.battery_v = rng.uniform(4.0, 4.15)
        self.rh = rng.uniform(40.0, 60.0)
        self.door_until = 0.0
        self.door_open = False
        if profile == "cold_box":
            self.coverage_gaps_per_h = 0.3
            self.box_mean_c = rng.uniform(4.3, 5.7)
            self.temp_c = self.box_mean_c + rng.gauss(0, 0.3)
            self.cab: _Cabinet | None = None
            return
        cab = _CABINETS[profile]
        self.cab = cab
        # Each unit's thermostat is set a little differently.
        shift = rng.uniform(-0.3, 0.3)
        self.cut_in = cab.cut_in_c + shift
        self.cut_out = cab.cut_out_c + shift
        self.temp_c = rng.uniform(self.cut_out, self.cut_in)
        self.compressor = rng.random() < 0.5
        self.defrost_until = 0.0
        self.next_defrost = t0 + rng.uniform(0, cab.defrost_every_s or 1)
        self.defrost_due = False

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        hour = local_hour(t)
        self.room_c_now = self.room_c + 2.0 * daily(hour, 15.0)
        self.rh = ou(self.rh, 50.0, 5.0, 3 * 3600, dt, rng)
        if self.cab is None:
            self._step_box(t, dt, hour)
            return
        cab = self.cab
        # Door openings in clinic hours, Poisson.
        if self.door_open and t >= self.door_until:
            self.door_open = False
            events.append((self.door_until, "door_close", {}))
        working = 8.0 <= hour < 17.0
        if not self.door_open and working and rng.random() < cab.door_per_h * dt / 3600:
            self.door_open = True
            self.door_until = t + rng.uniform(10, 40)
            events.append((t, "door_open", {}))
        # Defrost: only right after a cooling run, so the heater starts from the cold end.
        if cab.defrost_every_s and t >= self.next_defrost:
            self.defrost_due = True
        if self.defrost_due and self.temp_c < self.cut_out + 0.5 and self.power_ok:
            self.defrost_due = False
            self.defrost_until = t + cab.defrost_s
            self.next_defrost = t + cab.defrost_every_s * rng.uniform(0.9, 1.1)
        defrosting = t < self.defrost_until
        # Thermostat with hysteresis.
        if self.temp_c > self.cut_in:
            self.compressor = True
        elif self.temp_c < self.cut_out:
            self.compressor = False
        running = self.compressor and self.power_ok and not defrosting
        temp = relax(self.temp_c, self.room_c_now, cab.warm_tau_s, dt)
        if self.door_open:
            temp = relax(temp, self.room_c_now, cab.door_tau_s, dt)
        if running:
            temp -= cab.cool_c_per_s * dt
        if defrosting:
            temp += cab.defrost_heat_c_per_s * dt
        self.temp_c = temp
        if self.power_ok:
            self.battery_v = relax(self.battery_v, 4.1, 3600, dt)
        else:
            self.battery_v -= 0.05 * dt / 3600

    def _step_box(self, t: float, dt: float, hour: float) -> None:
        # A passive box with ice packs: slow wander around its packed temperature.
        self.temp_c = ou(self.temp_c, self.box_mean_c, 0.5, 1800, dt, self.rng)
        # The logger's battery drains by day and is charged overnight at the depot.
        charging = hour < 7.0 or hour >= 19.0
        self.battery_v = relax(self.battery_v, 4.15 if charging else 3.6, 8 * 3600, dt)

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        # Sensor accuracy ±0.5 °C (GSP); the measurement noise is well inside it.
        temp = self.temp_c + g(0.0, 0.05)
        if self.cab is None:
            return {"temp_c": temp, "battery_v": self.battery_v + g(0.0, 0.005)}
        out = {"temp_c": temp}
        if self.profile == "fridge":
            out["rh_pct"] = self.rh + g(0.0, 0.5)
        out["door_open"] = 1.0 if self.door_open else 0.0
        out["power_ok"] = 1.0 if self.power_ok else 0.0
        out["battery_v"] = self.battery_v + g(0.0, 0.005)
        return out

    def set_power(self, ok: bool, t: float) -> list[ModelEvent]:
        if self.cab is None or ok == self.power_ok:
            return []
        self.power_ok = ok
        return [(t, "power_restored" if ok else "power_loss", {})]
