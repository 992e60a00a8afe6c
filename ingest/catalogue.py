"""The metric catalogue of contract section 4: canonical names, units and physical ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DOMAINS: Final = ("coldchain", "air", "water", "pool", "wastewater", "waste")
CHANNELS: Final = ("telemetry", "event", "status")


@dataclass(frozen=True, slots=True)
class Metric:
    """One catalogue entry. A value outside [low, high] is a sensor fault, not a reading."""

    name: str
    unit: str
    low: float
    high: float
    binary: bool = False

    def in_range(self, value: float) -> bool:
        if self.binary:
            return value in (0, 1)
        return self.low <= value <= self.high


def _m(name: str, unit: str, low: float, high: float) -> Metric:
    return Metric(name, unit, low, high)


def _flag(name: str) -> Metric:
    return Metric(name, "", 0, 1, binary=True)


_PH = _m("ph", "", 0, 14)
_TURBIDITY = _m("turbidity_ntu", "NTU", 0, 1000)
_WATER_TEMP = _m("water_temp_c", "°C", -5, 100)
_FREE_CL = _m("free_chlorine_mgl", "mg/L", 0, 20)
_RH = _m("rh_pct", "%", 0, 100)
# The contract gives the storage-room temperature no range of its own; the coldchain
# range (the widest physically plausible one in the catalogue) is used.
_TEMP_COLD = _m("temp_c", "°C", -100, 60)

CATALOGUE: Final[dict[str, dict[str, Metric]]] = {
    "coldchain": {
        m.name: m
        for m in (
            _TEMP_COLD,
            _RH,
            _flag("door_open"),
            _flag("power_ok"),
            _m("battery_v", "V", 0, 20),
        )
    },
    "air": {
        m.name: m
        for m in (
            _m("temp_c", "°C", -40, 70),
            _RH,
            _m("co2_ppm", "ppm", 0, 20000),
            _m("pm25_ugm3", "µg/m³", 0, 2000),
            _m("pm10_ugm3", "µg/m³", 0, 2000),
            _m("hcho_mgm3", "mg/m³", 0, 10),
            _m("tvoc_mgm3", "mg/m³", 0, 50),
            _m("co_mgm3", "mg/m³", 0, 500),
            _m("air_speed_ms", "m/s", 0, 20),
        )
    },
    "water": {
        m.name: m
        for m in (
            _FREE_CL,
            _m("total_chlorine_mgl", "mg/L", 0, 20),
            _m("chlorine_dioxide_mgl", "mg/L", 0, 10),
            _TURBIDITY,
            _PH,
            _m("conductivity_uscm", "µS/cm", 0, 20000),
            _WATER_TEMP,
        )
    },
    "pool": {
        m.name: m
        for m in (
            _FREE_CL,
            _m("combined_chlorine_mgl", "mg/L", 0, 20),
            _PH,
            _TURBIDITY,
            _WATER_TEMP,
            _m("orp_mv", "mV", -1000, 1500),
            _m("urea_mgl", "mg/L", 0, 100),
        )
    },
    "wastewater": {
        m.name: m
        for m in (
            _m("total_residual_chlorine_mgl", "mg/L", 0, 100),
            _PH,
            _m("cod_mgl", "mg/L", 0, 10000),
            _m("flow_m3h", "m³/h", 0, 10000),
        )
    },
    "waste": {m.name: m for m in (_TEMP_COLD, _RH, _m("fill_pct", "%", 0, 100))},
}

# Event types per domain (contract section 3) and the fields each must carry.
EVENT_FIELDS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "waste": {
        "bag_sealed": ("bag_id", "category", "weight_kg", "department"),
        "bag_stored": ("bag_id",),
        "bag_collected": ("bag_id", "weight_kg", "manifest_no", "collector"),
    },
    "coldchain": {
        "door_open": (),
        "door_close": (),
        "power_loss": (),
        "power_restored": (),
    },
}
WASTE_CATEGORIES: Final = ("infectious", "pathological", "sharps", "pharmaceutical", "chemical")


def metric(domain: str, name: str) -> Metric | None:
    """The catalogue entry for `name` in `domain`, or None when the domain has no such metric."""
    return CATALOGUE.get(domain, {}).get(name)
