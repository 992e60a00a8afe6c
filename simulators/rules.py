"""The reference rule pack the ground truth is computed against.

Each simulated device runs these rules on the values it actually emits, so a truth
record says exactly which alert a correct rule pack raises for an injected fault (a
short excursion that never lasts the rule's `for` expects none). The limits come from
../shared/standards.md; the `for` durations and averaging windows are ours, recorded in
every truth record (`detail.rule`) so a consumer with other values can recompute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

Op = Literal[">", "<", "<=", "outside"]

# Rules that do not look at one metric's values; the fault that causes them names them.
OFFLINE: Final = "device.offline"  # Last Will, or no data for NO_DATA_INTERVALS intervals
SENSOR_FAULT: Final = "device.sensor_fault"  # SENSOR_FAULT_COUNT consecutive bad values
STUCK: Final = "device.stuck"  # the same value for STUCK_FOR_S
STORAGE_OVERDUE: Final = "waste.storage_overdue"  # stored, not collected within 48 h
WEIGHT_MISMATCH: Final = "waste.weight_mismatch"
COLLECTED_UNSEALED: Final = "waste.collected_unsealed"

NO_DATA_INTERVALS: Final = 3
# A silence is noticed on the service's next periodic check (every 15 s; a test harness
# may check less often): a backlog uploaded within this long of the silence becoming due
# may arrive first, so it is not expected to have raised the offline alert.
DETECTION_SLACK_S: Final = 120.0
SENSOR_FAULT_COUNT: Final = 3
STUCK_FOR_S: Final = 3600.0
STUCK_MIN_READINGS: Final = 3
# 医疗废物管理条例 第十七条: temporary storage at most 2 days.
STORAGE_LIMIT_S: Final = 48 * 3600.0
# standards.md: collected weight differing from the sealed weight by more than
# max(0.2 kg, 5 %) is a finding.
WEIGHT_TOLERANCE_KG: Final = 0.2
WEIGHT_TOLERANCE_FRACTION: Final = 0.05


@dataclass(frozen=True, slots=True)
class RefRule:
    """A threshold rule: `metric` `op` threshold held for `for_s`, or its rolling mean
    over `window_s` (when > 0) beyond the threshold."""

    rule_id: str
    domain: str
    metric: str
    op: Op
    low: float | None = None
    high: float | None = None
    for_s: float = 0.0
    window_s: float = 0.0
    profiles: tuple[str, ...] = ()  # empty: every profile of the domain
    source: str = ""

    def violated(self, value: float) -> bool:
        if self.op == ">":
            return value > self.high  # type: ignore[operator]
        if self.op == "<":
            return value < self.low  # type: ignore[operator]
        if self.op == "<=":
            return value <= self.low  # type: ignore[operator]
        return value < self.low or value > self.high  # type: ignore[operator]

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "for_s": self.for_s}
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        if self.window_s:
            out["window_s"] = self.window_s
        return out


def _r(rule_id: str, metric: str, op: Op, **kw: Any) -> RefRule:
    return RefRule(rule_id, rule_id.split(".")[0], metric, op, **kw)


_30M, _15M, _1H = 1800.0, 900.0, 3600.0
_GB5749 = "GB 5749-2022"
_GB37488 = "GB 37488-2019"
_GB18466 = "GB 18466-2005"

REFERENCE_RULES: Final[tuple[RefRule, ...]] = (
    # 疫苗储存和运输管理规范: 2-8 °C; a `for` so door openings and defrost do not alert.
    _r("coldchain.heat", "temp_c", ">", high=8.0, for_s=_30M, profiles=("fridge",)),
    _r("coldchain.cold", "temp_c", "<", low=2.0, for_s=_30M, profiles=("fridge",)),
    # WHO PQS E006 freeze alarm: at or below -0.5 °C for 60 minutes.
    _r("coldchain.freeze", "temp_c", "<=", low=-0.5, for_s=_1H, profiles=("fridge",)),
    _r("coldchain.freezer_warm", "temp_c", ">", high=-15.0, for_s=_30M, profiles=("freezer",)),
    _r("coldchain.freezer_warm", "temp_c", ">", high=-60.0, for_s=_30M, profiles=("ultra_low",)),
    _r("coldchain.transport_heat", "temp_c", ">", high=8.0, for_s=_30M, profiles=("cold_box",)),
    # GB 5749-2022: residual at the plant outlet >= 0.3, at the tap >= 0.05 mg/L.
    _r(
        "water.free_chlorine_low",
        "free_chlorine_mgl",
        "<",
        low=0.3,
        for_s=_15M,
        profiles=("plant_outlet",),
        source=_GB5749,
    ),
    _r(
        "water.free_chlorine_low",
        "free_chlorine_mgl",
        "<",
        low=0.05,
        for_s=_15M,
        profiles=("tap", "secondary_supply"),
        source=_GB5749,
    ),
    _r("water.turbidity_high", "turbidity_ntu", ">", high=1.0, for_s=_15M, source=_GB5749),
    _r("water.ph_range", "ph", "outside", low=6.5, high=8.5, for_s=_15M, source=_GB5749),
    # GB 37488-2019 人工游泳池水.
    _r(
        "pool.free_chlorine_range",
        "free_chlorine_mgl",
        "outside",
        low=0.3,
        high=1.0,
        for_s=_15M,
        source=_GB37488,
    ),
    _r("pool.combined_chlorine_high", "combined_chlorine_mgl", ">", high=0.4, for_s=_15M),
    _r("pool.ph_range", "ph", "outside", low=7.0, high=7.8, for_s=_15M, source=_GB37488),
    _r("pool.urea_high", "urea_mgl", ">", high=3.5, for_s=_15M, source=_GB37488),
    _r("pool.orp_low", "orp_mv", "<", low=650.0, for_s=_15M, source=_GB37488),
    _r("pool.turbidity_high", "turbidity_ntu", ">", high=1.0, for_s=_15M, source=_GB37488),
    # GB 37488-2019 limits, evaluated as GB/T 18883-2022 averaging-period means.
    _r("air.co2_high", "co2_ppm", ">", high=1000.0, window_s=_1H, profiles=("sleeping",)),
    _r("air.co2_high", "co2_ppm", ">", high=1500.0, window_s=_1H, profiles=("general",)),
    _r("air.hcho_high", "hcho_mgm3", ">", high=0.10, window_s=_1H, source=_GB37488),
    _r("air.pm25_high", "pm25_ugm3", ">", high=75.0, window_s=24 * _1H, source=_GB37488),
    _r("air.tvoc_high", "tvoc_mgm3", ">", high=0.60, window_s=8 * _1H, source=_GB37488),
    # GB 18466-2005 总余氯 at the disinfection-tank outlet, by hospital kind.
    _r(
        "wastewater.residual_chlorine_range",
        "total_residual_chlorine_mgl",
        "outside",
        low=6.5,
        high=10.0,
        for_s=_30M,
        profiles=("infectious",),
        source=_GB18466,
    ),
    _r(
        "wastewater.residual_chlorine_range",
        "total_residual_chlorine_mgl",
        "outside",
        low=3.0,
        high=10.0,
        for_s=_30M,
        profiles=("general_discharge",),
        source=_GB18466,
    ),
    _r(
        "wastewater.residual_chlorine_range",
        "total_residual_chlorine_mgl",
        "outside",
        low=2.0,
        high=8.0,
        for_s=_30M,
        profiles=("general_pretreatment",),
        source=_GB18466,
    ),
    _r("wastewater.ph_range", "ph", "outside", low=6.0, high=9.0, for_s=_30M, source=_GB18466),
    _r(
        "wastewater.cod_high",
        "cod_mgl",
        ">",
        high=60.0,
        for_s=_1H,
        profiles=("infectious", "general_discharge"),
        source=_GB18466,
    ),
    _r(
        "wastewater.cod_high",
        "cod_mgl",
        ">",
        high=250.0,
        for_s=_1H,
        profiles=("general_pretreatment",),
        source=_GB18466,
    ),
    # 医疗废物集中处置技术规范 2.4.2: the store kept below 20 °C.
    _r("waste.room_temp_high", "temp_c", ">", high=20.0, for_s=_1H),
)

ALL_RULE_IDS: Final = tuple(
    dict.fromkeys(
        [r.rule_id for r in REFERENCE_RULES]
        + [OFFLINE, SENSOR_FAULT, STUCK, STORAGE_OVERDUE, WEIGHT_MISMATCH, COLLECTED_UNSEALED]
    )
)


def rules_for(domain: str, profile: str) -> tuple[RefRule, ...]:
    """The reference rules that apply to one device."""
    return tuple(
        r
        for r in REFERENCE_RULES
        if r.domain == domain and (not r.profiles or profile in r.profiles)
    )


def rule_for(domain: str, profile: str, rule_id: str) -> RefRule | None:
    for r in rules_for(domain, profile):
        if r.rule_id == rule_id:
            return r
    return None


class Tracker:
    """One reference rule evaluated on one device's stored values, in event-time order."""

    __slots__ = ("_n", "_sum", "_window", "fired", "first_ts", "rule", "since")

    def __init__(self, rule: RefRule) -> None:
        self.rule = rule
        self.since: float | None = None  # start of the current violation
        self.fired = False  # the current episode has raised its alert
        self.first_ts: float | None = None
        self._window: deque[tuple[float, float]] = deque()
        self._sum = 0.0
        self._n = 0

    def feed(self, ts: float, value: float) -> bool:
        """Take one stored value; True when the rule fires at this sample."""
        if self.first_ts is None:
            self.first_ts = ts
        rule = self.rule
        if rule.window_s:
            win = self._window
            win.append((ts, value))
            self._sum += value
            while win and win[0][0] <= ts - rule.window_s:
                self._sum -= win.popleft()[1]
            # A mean is judged only once the device has reported for a whole window.
            if ts - self.first_ts < rule.window_s * 0.99:
                return False
            bad = rule.violated(self._sum / len(win))
        else:
            bad = rule.violated(value)
        if not bad:
            self.since = None
            self.fired = False
            return False
        if self.since is None:
            self.since = ts
        if not self.fired and ts - self.since >= rule.for_s:
            self.fired = True
            return True
        return False

    @property
    def violating(self) -> bool:
        return self.since is not None
