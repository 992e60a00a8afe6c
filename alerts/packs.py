"""Default rule packs per domain, encoding ../shared/standards.md; each rule cites its clause.

Per-profile limits sit in one rule's `overrides`, so a rule id means the same hazard on
every profile (`wastewater.residual_chlorine_range` is 6.5-10 mg/L at an infectious-disease
hospital and 2-8 mg/L before a municipal sewer). The `for` durations and averaging
periods match the simulators' reference pack (simulators/rules.py), so the ground truth
and the service agree on when an excursion is an alert.
Clause numbers marked "(check)" come from secondary sources and should be verified.
"""

from __future__ import annotations

from typing import Any, Final

from alerts.rules import Rule, parse_rule

_M15, _M30, _H1 = 900.0, 1800.0, 3600.0

_VACCINE = "疫苗储存和运输管理规范(2017) 第十一条: 2-8 °C unless the label says otherwise (check)"
_WHO_E006 = "WHO PQS E006 30-day temperature recorder alarms"
_WHO_SHIP = "WHO PQS E006 shipping/transport temperature indicators (cumulative)"
_GB5749_T1 = "GB 5749-2022 第4章 表1 (水质常规指标)"
_GB5749_T3 = "GB 5749-2022 第4章 表3 (饮用水中消毒剂常规指标及要求)"
_GB37488_POOL = "GB 37488-2019 人工游泳池水质卫生要求 (4.4, check)"
_GB37488_AIR = "GB 37488-2019 室内空气质量 (4.2, check); averaged per GB/T 18883-2022 表1"
_GB18466_T1 = "GB 18466-2005 4.1.1 表1 (传染病、结核病医疗机构), 总余氯 note: contact >= 1.5 h"
_GB18466_T2 = "GB 18466-2005 4.1.2 表2 (综合医疗机构和其他医疗机构)"
_WASTE_17 = "医疗废物管理条例 (2003, 2011 rev.) 第十七条: 暂时贮存不得超过2天"
_WASTE_12 = "医疗废物管理条例 第十二条 (登记: 重量), 医疗废物转移联单"
_WASTE_BAG = "医疗卫生机构医疗废物管理办法 第十一条 (包装、封口) (check)"
_WASTE_TECH = "医疗废物集中处置技术规范 2.4.2: store kept below 20 °C"
_GSP = "药品经营质量管理规范 附录 温湿度自动监测 (records every 30 min storage / 5 min transport)"


def _thr(rule_id: str, domain: str, metric: str, op: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "threshold", "rule_id": rule_id, "metric": metric, "op": op,
            "scope": {"domain": domain, **kw.pop("scope", {})}, **kw}  # fmt: skip


def _profiles(*names: str) -> dict[str, Any]:
    return {"profiles": list(names)}


COLDCHAIN: Final[list[dict[str, Any]]] = [
    _thr("coldchain.heat", "coldchain", "temp_c", "above", high=8.0, clear_high=7.5,
         for_s=_M30, severity="warning", scope=_profiles("fridge"), standard=_VACCINE,
         name="Vaccine fridge above 8 °C",
         escalations=[{"severity": "critical", "after_s": 2 * _H1},
                      {"severity": "critical", "beyond": 4.0}]),
    _thr("coldchain.cold", "coldchain", "temp_c", "below", low=2.0, clear_low=2.5,
         for_s=_M30, severity="warning", scope=_profiles("fridge"), standard=_VACCINE,
         name="Vaccine fridge below 2 °C",
         escalations=[{"severity": "critical", "after_s": 2 * _H1},
                      {"severity": "critical", "beyond": 2.0}]),
    _thr("coldchain.freeze", "coldchain", "temp_c", "below", low=-0.5, inclusive=True,
         for_s=_H1, severity="critical", scope=_profiles("fridge"),
         standard=f"{_WHO_E006}: freeze alarm <= -0.5 °C for 60 min",
         name="Freeze alarm (WHO)"),
    _thr("coldchain.who_heat_10h", "coldchain", "temp_c", "above", high=8.0,
         for_s=10 * _H1, severity="critical", scope=_profiles("fridge"),
         standard=f"{_WHO_E006}: heat alarm > +8 °C for 10 h continuous",
         name="Heat alarm (WHO, 10 h)"),
    _thr("coldchain.freezer_warm", "coldchain", "temp_c", "above", high=-15.0,
         for_s=_M30, severity="critical", scope=_profiles("freezer", "ultra_low"),
         overrides={"ultra_low": {"high": -60.0,
                                  "standard": "疫苗储存和运输管理规范: labelled range; "
                                  "ultra_low -80 to -60 °C"}},
         standard="疫苗储存和运输管理规范: labelled range; freezer -25 to -15 °C",
         name="Freezer warmer than its range"),
    _thr("coldchain.transport_heat", "coldchain", "temp_c", "above", high=8.0,
         for_s=_M30, severity="critical", scope=_profiles("cold_box"),
         standard=f"{_VACCINE}; transport", name="Cold box above 8 °C"),
    # WHO shipping indicators (cold boxes): time beyond the limit, cumulative over a trip
    # (a sliding 5-day window stands in for one indicator's life).
    *[
        {"kind": "cumulative", "rule_id": rid, "metric": "temp_c", "op": op, "limit": lim,
         "total_s": tot, "window_s": 5 * 24 * _H1, "severity": "critical",
         "scope": {"domain": "coldchain", "profiles": ["cold_box"]}, "manual_resolve": True,
         "standard": f"{_WHO_SHIP}: {txt}", "name": f"Shipping indicator {txt}"}
        for rid, op, lim, tot, txt in (
            ("coldchain.shipping_30c_10h", "above", 30.0, 10 * _H1, ">= 30 °C for 10 h cumulative"),
            ("coldchain.shipping_45c_1h", "above", 45.0, _H1, ">= 45 °C for 1 h cumulative"),
            ("coldchain.shipping_freeze_1h", "below", -0.5, _H1, "<= -0.5 °C for 1 h cumulative"),
            ("coldchain.shipping_10c_20h", "above", 10.0, 20 * _H1, ">= 10 °C for 20 h cumulative"),
        )
    ],
]  # fmt: skip

DEVICE: Final[list[dict[str, Any]]] = [
    {"kind": "no_data", "rule_id": "device.offline", "factor": 3.0, "severity": "warning",
     "name": "Device offline / no data",
     "standard": f"{_GSP}; a device reporting less often than its interval is a finding",
     "escalations": [{"severity": "critical", "after_s": 4 * _H1}]},
    {"kind": "sensor_fault", "rule_id": "device.sensor_fault", "count": 3,
     "window_s": 6 * _H1, "clear_readings": 3, "severity": "warning",
     "name": "Sensor fault (out of physical range or error values)",
     "standard": "Contract section 4: a value outside the physical range is a sensor fault; "
     "GSP sensor accuracy ±0.5 °C"},
    {"kind": "stuck", "rule_id": "device.stuck", "min_readings": 3, "min_duration_s": _H1,
     "tolerance": 0.0, "severity": "warning", "name": "Sensor value stuck",
     "metrics": [],  # every non-binary catalogue metric of the device's domain
     "standard": "GSP 附录: readings refreshed at least every minute (a frozen value is no "
     "measurement)"},
    {"kind": "site_silence", "rule_id": "site.silent", "min_devices": 2,
     "severity": "critical", "name": "Whole site silent (gateway or uplink)",
     "standard": "healthmon: per-device offline alerts held back under one site alert"},
]  # fmt: skip

WATER: Final[list[dict[str, Any]]] = [
    _thr("water.free_chlorine_low", "water", "free_chlorine_mgl", "below", low=0.05,
         for_s=_M15, severity="critical",
         overrides={"plant_outlet": {"low": 0.3, "standard":
                    f"{_GB5749_T3}: 游离氯 出厂水余量 >= 0.3 mg/L"}},
         standard=f"{_GB5749_T3}: 游离氯 末梢水余量 >= 0.05 mg/L "
         "(secondary supply: GB 17051-1996, judged as tap water)",
         name="Free chlorine residual too low"),
    _thr("water.free_chlorine_high", "water", "free_chlorine_mgl", "above", high=2.0,
         for_s=_M15, severity="warning", standard=f"{_GB5749_T3}: 游离氯 <= 2 mg/L",
         name="Free chlorine above limit"),
    _thr("water.turbidity_high", "water", "turbidity_ntu", "above", high=1.0, for_s=_M15,
         severity="warning", standard=f"{_GB5749_T1}: 浑浊度 <= 1 NTU",
         escalations=[{"severity": "critical", "beyond": 2.0}],
         name="Turbidity above 1 NTU"),
    _thr("water.ph_range", "water", "ph", "outside", low=6.5, high=8.5, for_s=_M15,
         severity="warning", standard=f"{_GB5749_T1}: pH 6.5-8.5", name="pH out of range"),
]  # fmt: skip

POOL: Final[list[dict[str, Any]]] = [
    _thr("pool.free_chlorine_range", "pool", "free_chlorine_mgl", "outside", low=0.3,
         high=1.0, for_s=_M15, severity="warning",
         standard=f"{_GB37488_POOL}: 游离性余氯 0.3-1.0 mg/L", name="Pool free chlorine"),
    _thr("pool.combined_chlorine_high", "pool", "combined_chlorine_mgl", "above", high=0.4,
         for_s=_M15, severity="warning", standard=f"{_GB37488_POOL}: 化合性余氯 <= 0.4 mg/L",
         name="Pool combined chlorine"),
    _thr("pool.ph_range", "pool", "ph", "outside", low=7.0, high=7.8, for_s=_M15,
         severity="warning", standard=f"{_GB37488_POOL}: pH 7.0-7.8", name="Pool pH"),
    _thr("pool.urea_high", "pool", "urea_mgl", "above", high=3.5, for_s=_M15,
         severity="warning", standard=f"{_GB37488_POOL}: 尿素 <= 3.5 mg/L", name="Pool urea"),
    _thr("pool.orp_low", "pool", "orp_mv", "below", low=650.0, for_s=_M15,
         severity="warning", standard=f"{_GB37488_POOL}: ORP >= 650 mV", name="Pool ORP low"),
    _thr("pool.turbidity_high", "pool", "turbidity_ntu", "above", high=1.0, for_s=_M15,
         severity="warning", standard=f"{_GB37488_POOL}: 浑浊度 <= 1 NTU",
         name="Pool turbidity"),
]  # fmt: skip

AIR: Final[list[dict[str, Any]]] = [
    _thr("air.co2_high", "air", "co2_ppm", "above", high=1500.0, mean_s=_H1,
         severity="warning",
         overrides={"sleeping": {"high": 1000.0, "standard":
                    f"{_GB37488_AIR}: CO2 <= 0.10 % where people sleep or rest; 1-h mean"}},
         standard=f"{_GB37488_AIR}: CO2 <= 0.15 % (other public places); 1-h mean",
         name="CO2 high (1-h mean)"),
    _thr("air.hcho_high", "air", "hcho_mgm3", "above", high=0.10, mean_s=_H1,
         severity="warning", standard=f"{_GB37488_AIR}: 甲醛 <= 0.10 mg/m³; 1-h mean",
         name="Formaldehyde high (1-h mean)"),
    _thr("air.pm25_high", "air", "pm25_ugm3", "above", high=75.0, mean_s=24 * _H1,
         severity="warning", standard=f"{_GB37488_AIR}: PM2.5 <= 75 µg/m³ (check); 24-h mean",
         name="PM2.5 high (24-h mean)"),
    _thr("air.tvoc_high", "air", "tvoc_mgm3", "above", high=0.60, mean_s=8 * _H1,
         severity="warning", standard=f"{_GB37488_AIR}: TVOC <= 0.60 mg/m³; 8-h mean",
         name="TVOC high (8-h mean)"),
    _thr("air.co_high", "air", "co_mgm3", "above", high=10.0, mean_s=_H1,
         severity="critical", standard=f"{_GB37488_AIR}: CO <= 10 mg/m³; 1-h mean",
         name="Carbon monoxide high (1-h mean)"),
]  # fmt: skip

WASTEWATER: Final[list[dict[str, Any]]] = [
    _thr("wastewater.residual_chlorine_range", "wastewater", "total_residual_chlorine_mgl",
         "outside", low=6.5, high=10.0, for_s=_M30, severity="critical",
         scope=_profiles("infectious", "general_discharge", "general_pretreatment"),
         standard=f"{_GB18466_T1}: 总余氯 6.5-10 mg/L",
         overrides={
             "general_discharge": {"low": 3.0, "high": 10.0, "severity": "warning",
                                   "standard": f"{_GB18466_T2} 排放标准: 总余氯 3-10 mg/L"},
             "general_pretreatment": {"low": 2.0, "high": 8.0, "severity": "warning",
                                      "standard": f"{_GB18466_T2} 预处理标准: 总余氯 2-8 mg/L"},
         },
         name="Residual chlorine out of range"),
    _thr("wastewater.ph_range", "wastewater", "ph", "outside", low=6.0, high=9.0,
         for_s=_M30, severity="warning", standard=f"{_GB18466_T1}/{_GB18466_T2}: pH 6-9",
         name="Wastewater pH"),
    _thr("wastewater.cod_high", "wastewater", "cod_mgl", "above", high=60.0, for_s=_H1,
         severity="warning",
         scope=_profiles("infectious", "general_discharge", "general_pretreatment"),
         overrides={"general_pretreatment": {"high": 250.0, "standard":
                    f"{_GB18466_T2} 预处理标准: COD <= 250 mg/L"}},
         standard=f"{_GB18466_T1}/{_GB18466_T2} 排放标准: COD <= 60 mg/L",
         name="COD high"),
]  # fmt: skip

WASTE: Final[list[dict[str, Any]]] = [
    {"kind": "waste_storage", "rule_id": "waste.storage_overdue", "warn_s": 36 * _H1,
     "limit_s": 48 * _H1, "severity": "warning", "limit_severity": "critical",
     "scope": {"domain": "waste"}, "standard": _WASTE_17,
     "name": "Waste bag stored too long"},
    {"kind": "waste_weight", "rule_id": "waste.weight_mismatch", "tolerance_kg": 0.2,
     "tolerance_pct": 5.0, "severity": "warning", "scope": {"domain": "waste"},
     "standard": f"{_WASTE_12}; tolerance max(0.2 kg, 5 %)",
     "name": "Bag weight differs at handover"},
    {"kind": "waste_unsealed", "rule_id": "waste.collected_unsealed", "grace_s": 600,
     "severity": "warning", "scope": {"domain": "waste"}, "standard": _WASTE_BAG,
     "name": "Bag collected without a seal record"},
    {"kind": "waste_not_stored", "rule_id": "waste.sealed_not_stored", "limit_s": 48 * _H1,
     "severity": "info", "scope": {"domain": "waste"}, "standard": f"{_WASTE_12}; {_WASTE_17}",
     "name": "Bag sealed but never stored or collected"},
    _thr("waste.room_temp_high", "waste", "temp_c", "above", high=20.0, for_s=_H1,
         severity="warning", standard=_WASTE_TECH, name="Waste store above 20 °C"),
]  # fmt: skip

PACKS: Final[dict[str, list[dict[str, Any]]]] = {
    "device": DEVICE,
    "coldchain": COLDCHAIN,
    "water": WATER,
    "pool": POOL,
    "air": AIR,
    "wastewater": WASTEWATER,
    "waste": WASTE,
}


def default_rules() -> list[Rule]:
    """Every rule of every default pack, validated."""
    return [parse_rule(body) for pack in PACKS.values() for body in pack]
