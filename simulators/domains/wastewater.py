"""Hospital wastewater at the disinfection-tank outlet: residual chlorine dosed in
proportion to flow, pH, COD and flow following the hospital's day."""

from __future__ import annotations

import math
from random import Random
from typing import ClassVar

from simulators.domains.base import DomainModel, Excursion, MetricBehaviour, ModelEvent, ou
from simulators.model import local_hour

# Chlorine setpoint band per profile, inside the GB 18466-2005 range of each.
_SETPOINT = {
    "infectious": (7.8, 8.6),
    "general_discharge": (5.0, 7.0),
    "general_pretreatment": (4.0, 5.5),
}
_COD = {"infectious": (20.0, 38.0), "general_discharge": (20.0, 38.0)}


def activity(hour: float) -> float:
    """Hospital water use over the day (0.3 at night, peaks mid-morning and afternoon)."""
    morning = math.exp(-(((hour - 10.0) / 2.0) ** 2))
    afternoon = math.exp(-(((hour - 15.0) / 2.0) ** 2))
    return 0.3 + 0.7 * max(morning, 0.8 * afternoon)


class WastewaterModel(DomainModel):
    """A disinfection-outlet analyser with a flow meter."""

    domain = "wastewater"
    profiles = (
        ("infectious", 0.2),
        ("general_discharge", 0.4),
        ("general_pretreatment", 0.4),
    )
    default_interval_s: ClassVar[dict[str, int]] = {p: 60 for p, _ in profiles}
    site_kind = "hospital"
    devices_per_site = 1
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "total_residual_chlorine_mgl": MetricBehaviour(
            "total_residual_chlorine_mgl", 2, 5.0, -0.3, (-1.0, 150.0)
        ),
        "ph": MetricBehaviour("ph", 2, 2.0, -0.05, (-1.0, 15.0)),
        "cod_mgl": MetricBehaviour("cod_mgl", 0, 100.0, 5.0, (-10.0, 12000.0)),
        "flow_m3h": MetricBehaviour("flow_m3h", 1, 40.0, 1.0, (-5.0, 15000.0)),
    }
    _CL = "total_residual_chlorine_mgl"
    _RULE_CL = "wastewater.residual_chlorine_range"
    excursions = (
        # The hypochlorite pump fails or its tank runs dry.
        Excursion("dosing_failure", _CL, 2.0, 5.5, 1800, 1800, 6 * 3600, _RULE_CL, ("infectious",)),
        Excursion(
            "dosing_failure", _CL, 0.5, 2.2, 1800, 1800, 6 * 3600, _RULE_CL, ("general_discharge",)
        ),
        Excursion(
            "dosing_failure",
            _CL,
            0.2,
            1.5,
            1800,
            1800,
            6 * 3600,
            _RULE_CL,
            ("general_pretreatment",),
        ),
        Excursion(
            "overdose",
            _CL,
            11.0,
            14.0,
            1800,
            1800,
            4 * 3600,
            _RULE_CL,
            ("infectious", "general_discharge"),
        ),
        Excursion(
            "overdose", _CL, 9.0, 12.0, 1800, 1800, 4 * 3600, _RULE_CL, ("general_pretreatment",)
        ),
        Excursion("ph_low", "ph", 4.5, 5.6, 1800, 1800, 4 * 3600, "wastewater.ph_range"),
        Excursion("ph_high", "ph", 9.4, 10.5, 1800, 1800, 4 * 3600, "wastewater.ph_range"),
        Excursion(
            "cod",
            "cod_mgl",
            90.0,
            200.0,
            3600,
            3600,
            8 * 3600,
            "wastewater.cod_high",
            ("infectious", "general_discharge"),
        ),
        Excursion(
            "cod",
            "cod_mgl",
            320.0,
            600.0,
            3600,
            3600,
            8 * 3600,
            "wastewater.cod_high",
            ("general_pretreatment",),
        ),
    )
    max_substep_s = 60.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.setpoint = rng.uniform(*_SETPOINT[profile])
        self.chlorine = self.setpoint
        self.flow_peak = rng.uniform(8.0, 60.0)
        self.flow = self.flow_peak * activity(local_hour(t0))
        self.ph_mean = rng.uniform(6.9, 7.7)
        self.ph = self.ph_mean
        self.cod_base = rng.uniform(*_COD.get(profile, (90.0, 150.0)))
        self.cod = self.cod_base
        self.act = activity(local_hour(t0))

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        self.act = act = activity(local_hour(t))
        self.flow = max(
            0.5, ou(self.flow, self.flow_peak * act, 0.08 * self.flow_peak, 900, dt, rng)
        )
        # The doser follows flow with a lag: a surge briefly thins the residual.
        self.chlorine = ou(self.chlorine, self.setpoint, 0.3, 1200, dt, rng)
        self.ph = ou(self.ph, self.ph_mean, 0.1, 3 * 3600, dt, rng)
        self.cod = ou(
            self.cod, self.cod_base * (0.8 + 0.3 * act), 0.08 * self.cod_base, 3600, dt, rng
        )

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        return {
            self._CL: max(0.0, self.chlorine + g(0, 0.03)),
            "ph": self.ph + g(0, 0.01),
            "cod_mgl": max(1.0, self.cod + g(0, 1.0)),
            "flow_m3h": self.flow + g(0, 0.1),
        }
