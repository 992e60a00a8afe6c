"""Pure rule evaluation: each kind fires and clears exactly where it should (table-driven,
explicit datetimes, state round-tripped through JSON between readings)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.actions import Escalate, Fire, Inputs, Outcome, Resolve
from alerts.evaluate import evaluate, on_time
from alerts.rules import RuleBase, parse_rule
from alerts.waste import Member, site_verdict
from ingest import DeviceInfo, Event, Reading, Reason, Rejection, StatusUpdate

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
DEV = DeviceInfo("dev-1", "coldchain", "site-1", "r1", "fridge", 60)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def mins(dt: datetime) -> float:
    return (dt - T0).total_seconds() / 60


def rule(**body: Any) -> RuleBase:
    body.setdefault("rule_id", "t.rule")
    return parse_rule(body)


def summary(actions: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, Fire):
            out.append(("fire", mins(a.started_at), mins(a.detected_ts), a.severity))
        elif isinstance(a, Escalate):
            out.append(("escalate", mins(a.at), a.severity))
        elif isinstance(a, Resolve):
            out.append(("resolve", mins(a.at)))
    return out


def stream(r: RuleBase, points: Sequence[tuple[float, float | None]], metric: str) -> list[Any]:
    """Feed one reading at a time, the state going through JSON in between (as via jsonb)."""
    state: dict[str, Any] = {}
    actions: list[Any] = []
    for m, v in points:
        reading = Reading(at(m), DEV.device_id, metric, v)
        out = evaluate(r, state, Inputs(device=DEV, readings=[reading]), at(m))
        state = json.loads(json.dumps(out.state))
        actions += out.actions
    return summary(actions)


def batch(r: RuleBase, points: Sequence[tuple[float, float | None]], metric: str) -> list[Any]:
    """All readings in one batch, shuffled: event time decides, not arrival order."""
    readings = [Reading(at(m), DEV.device_id, metric, v) for m, v in reversed(points)]
    out = evaluate(r, {}, Inputs(device=DEV, readings=readings), at(10_000))
    return summary(out.actions)


HEAT = {"kind": "threshold", "metric": "temp_c", "op": "above", "high": 8.0,
        "clear_high": 7.5, "for_s": 1800}  # fmt: skip

THRESHOLD_CASES = [
    pytest.param(HEAT, [(0, 5), (10, 9), (20, 9), (40, 9), (50, 7.9), (60, 7.4)],
                 [("fire", 10, 40, "warning"), ("resolve", 60)], id="for-30min-then-hysteresis"),
    pytest.param(HEAT, [(0, 9), (20, 9), (25, 5), (30, 9), (55, 9)], [],
                 id="short-excursions-never-last-for"),
    pytest.param(HEAT, [(0, 9), (30, 9)], [("fire", 0, 30, "warning")], id="for-boundary-fires"),
    pytest.param(HEAT, [(0, 8.0), (40, 8.0)], [], id="at-limit-not-above"),
    pytest.param({**HEAT, "for_s": 0}, [(0, 9), (5, 7.6), (10, 9), (15, 7.5)],
                 [("fire", 0, 0, "warning"), ("resolve", 15)], id="hovering-does-not-flap"),
    pytest.param({**HEAT, "for_s": 0, "clear_for_s": 600}, [(0, 9), (5, 7), (10, 9), (15, 7),
                                                            (20, 7), (25, 7)],
                 [("fire", 0, 0, "warning"), ("resolve", 15)], id="clear-for"),
    pytest.param({"kind": "threshold", "metric": "temp_c", "op": "below", "low": -0.5,
                  "inclusive": True, "for_s": 3600},
                 [(0, -0.5), (30, -0.6), (59, -0.5), (60, -0.4), (70, -0.5), (130, -0.5)],
                 [("fire", 70, 130, "warning")], id="who-freeze-inclusive-continuous"),
    pytest.param({"kind": "threshold", "metric": "temp_c", "op": "outside", "low": 2,
                  "high": 8, "for_s": 0},
                 [(0, 5), (1, 1.9), (2, 5), (3, 8.1), (4, 2.0)],
                 [("fire", 1, 1, "warning"), ("resolve", 2), ("fire", 3, 3, "warning"),
                  ("resolve", 4)], id="outside-range"),
    pytest.param({**HEAT, "for_s": 0, "escalations": [{"severity": "critical", "after_s": 3600}]},
                 [(0, 9), (30, 9), (60, 9), (61, 9), (70, 5)],
                 [("fire", 0, 0, "warning"), ("escalate", 60, "critical"), ("resolve", 70)],
                 id="escalate-after-duration"),
    pytest.param({**HEAT, "for_s": 0, "escalations": [{"severity": "critical", "beyond": 4}]},
                 [(0, 9), (5, 11.9), (10, 12.0), (15, 13)],
                 [("fire", 0, 0, "warning"), ("escalate", 10, "critical")],
                 id="escalate-farther-value"),
    pytest.param({"kind": "threshold", "metric": "temp_c", "op": "above", "high": 10,
                  "mean_s": 3600},
                 [(m, 5.0) for m in range(0, 60, 10)] + [(60, 20), (70, 20), (80, 20), (90, 5)]
                 + [(100, 5), (110, 5), (120, 5)],
                 [("fire", 80, 80, "warning"), ("resolve", 120)], id="rolling-1h-mean"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "points", "expected"), THRESHOLD_CASES)
def test_threshold_fires_and_clears_where_it_should(
    body: dict[str, Any], points: Sequence[tuple[float, float]], expected: list[Any]
) -> None:
    r = rule(**body)
    assert stream(r, points, "temp_c") == expected
    assert batch(r, points, "temp_c") == expected


def test_mean_is_not_judged_before_a_whole_period() -> None:
    r = rule(kind="threshold", metric="temp_c", op="above", high=10, mean_s=3600)
    assert stream(r, [(0, 50), (30, 50), (58, 50)], "temp_c") == []


CUMULATIVE = {"kind": "cumulative", "metric": "temp_c", "op": "above", "limit": 30,
              "total_s": 10 * 3600, "window_s": 5 * 86400, "max_hold_s": 7200}  # fmt: skip
H = 60  # minutes per hour


@pytest.mark.parametrize(
    ("body", "points", "expected"),
    [
        pytest.param(CUMULATIVE,
                     [(h * H, 31) for h in range(6)] + [(h * H, 20) for h in range(6, 11)]
                     + [(h * H, 31) for h in range(11, 17)],
                     [("fire", 11 * H, 15 * H, "warning")], id="who-30c-10h-cumulative"),
        pytest.param(CUMULATIVE, [(h * H, 31 if h % 2 == 0 else 20) for h in range(30)],
                     [("fire", 18 * H, 19 * H, "warning")], id="only-time-out-counts"),
        pytest.param({**CUMULATIVE, "window_s": 12 * 3600},
                     [(h * H, 31) for h in range(11)] + [(h * H, 20) for h in range(11, 24)],
                     [("fire", 0, 10 * H, "warning"), ("resolve", 14 * H)], id="window-slides"),
        pytest.param({**CUMULATIVE, "max_hold_s": 1800},
                     [(0, 31), (24 * H, 20)], [], id="gap-counts-at-most-max-hold"),
        pytest.param({**CUMULATIVE, "op": "below", "limit": -0.5, "total_s": 3600},
                     [(0, -0.5), (30, -1), (60, 3)], [("fire", 0, 60, "warning")],
                     id="freeze-inclusive"),
    ],
)  # fmt: skip
def test_cumulative_counts_only_time_out_of_range(
    body: dict[str, Any], points: Sequence[tuple[float, float]], expected: list[Any]
) -> None:
    r = rule(**body)
    assert stream(r, points, "temp_c") == expected
    assert batch(r, points, "temp_c") == expected


@pytest.mark.parametrize(
    ("body", "points", "expected"),
    [
        pytest.param({"max_per_h": 5.0},
                     [(0, 5.0), (5, 5.1), (10, 5.2), (15, 6.0), (20, 7.0), (25, 7.1), (40, 7.2)],
                     [("fire", 20, 20, "warning"), ("resolve", 40)], id="rise"),
        pytest.param({"max_per_h": 5.0, "direction": "up"}, [(0, 9), (10, 5), (20, 1)], [],
                     id="direction-up-ignores-fall"),
        pytest.param({"max_per_h": 5.0}, [(0, 5), (1, 9)], [], id="min-span"),
    ],
)  # fmt: skip
def test_rate_of_change(
    body: dict[str, Any], points: Sequence[tuple[float, float]], expected: list[Any]
) -> None:
    r = rule(kind="rate", metric="temp_c", window_s=900, min_span_s=300, **body)
    assert stream(r, points, "temp_c") == expected


@pytest.mark.parametrize(
    ("body", "points", "expected"),
    [
        pytest.param({"min_readings": 3, "min_duration_s": 3600},
                     [(0, 4.0), (30, 4.0), (60, 4.0), (70, 4.1)],
                     [("fire", 0, 60, "warning"), ("resolve", 70)], id="n-and-minutes"),
        pytest.param({"min_readings": 3, "min_duration_s": 3600},
                     [(0, 4.0), (59, 4.0), (60, 4.2), (61, 4.2)], [], id="changes-in-time"),
        pytest.param({"min_readings": 5, "min_duration_s": None},
                     [(m, 4.0) for m in range(5)], [("fire", 0, 4, "warning")], id="n-only"),
        pytest.param({"min_readings": 3, "min_duration_s": 0, "tolerance": 0.05},
                     [(0, 4.0), (1, 4.04), (2, 3.97)], [("fire", 0, 2, "warning")],
                     id="tolerance"),
    ],
)  # fmt: skip
def test_stuck_value(
    body: dict[str, Any], points: Sequence[tuple[float, float]], expected: list[Any]
) -> None:
    r = rule(kind="stuck", metrics=["temp_c"], **body)
    assert stream(r, points, "temp_c") == expected


def test_stuck_ignores_binary_metrics_by_default() -> None:
    r = rule(kind="stuck", min_readings=2, min_duration_s=0)
    assert stream(r, [(0, 0), (1, 0), (2, 0)], "door_open") == []
    assert stream(r, [(0, 3), (1, 3)], "battery_v")[0][0] == "fire"


def _fault(m: float) -> Rejection:
    return Rejection(Reason.OUT_OF_PHYSICAL_RANGE, "temp_c 999", "t", at(m), DEV.device_id,
                     metric="temp_c", value=999.0, ts=at(m))  # fmt: skip


def test_sensor_fault_repeated_out_of_range_or_null_then_good_readings() -> None:
    r = rule(kind="sensor_fault", count=3, window_s=3600, clear_readings=3)
    st: dict[str, Any] = {}
    seq: list[Inputs] = [
        Inputs(DEV, faults=[_fault(0)]),
        Inputs(DEV, faults=[_fault(10)], readings=[Reading(at(12), "dev-1", "rh_pct", 40)]),
        Inputs(DEV, readings=[Reading(at(20), "dev-1", "temp_c", None)]),
        Inputs(DEV, readings=[Reading(at(m), "dev-1", "temp_c", 5.0) for m in (25, 30)]),
        Inputs(DEV, readings=[Reading(at(35), "dev-1", "temp_c", 5.0)]),
    ]
    got = []
    for inp in seq:
        out = evaluate(r, st, inp, at(40))
        st = json.loads(json.dumps(out.state))
        got += summary(out.actions)
    # rh_pct readings never clear a temp_c fault
    assert got == [("fire", 0, 20, "warning"), ("resolve", 35)]


def test_sensor_fault_sparse_faults_do_not_fire() -> None:
    r = rule(kind="sensor_fault", count=3, window_s=3600)
    out = evaluate(r, {}, Inputs(DEV, faults=[_fault(0), _fault(40), _fault(90)]), at(90))
    assert out.actions == []


def _run_time(r: RuleBase, steps: list[tuple[str, Any, float]]) -> list[Any]:
    """steps: ("in", Inputs, now_min) evaluates, ("tick", None, now_min) runs on_time."""
    st: dict[str, Any] = {}
    got: list[Any] = []
    for what, inp, now_m in steps:
        out: Outcome = (
            evaluate(r, st, inp, at(now_m)) if what == "in" else on_time(r, st, at(now_m))
        )
        st = json.loads(json.dumps(out.state))
        got += summary(out.actions)
        if out.due is not None:
            got.append(("due", mins(out.due)))
    return got


def _reading(m: float, received_m: float | None = None) -> Reading:
    rec = at(received_m if received_m is not None else m)
    return Reading(at(m), DEV.device_id, "temp_c", 5.0, received_at=rec)


NO_DATA = {"kind": "no_data", "factor": 3}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [("in", Inputs(DEV, readings=[_reading(0)]), 0), ("tick", None, 2.9),
             ("tick", None, 3), ("in", Inputs(DEV, readings=[_reading(10)]), 10)],
            [("due", 3), ("due", 3), ("fire", 0, 3, "warning"), ("resolve", 10), ("due", 13)],
            id="silent-3-intervals"),
        pytest.param(
            [("in", Inputs(DEV, readings=[_reading(0)]), 0),
             ("in", Inputs(DEV, statuses=[StatusUpdate("dev-1", False, at(1))]), 1),
             ("tick", None, 1)],
            [("due", 3), ("due", 1), ("fire", 1, 1, "warning")], id="last-will-at-once"),
        pytest.param(
            [("in", Inputs(DEV, statuses=[StatusUpdate("dev-1", False, at(1))],
                           readings=[_reading(2)]), 2)],
            [("fire", 1, 1, "warning"), ("resolve", 2), ("due", 5)],
            id="will-and-return-in-one-batch"),
        pytest.param(
            [("in", Inputs(DEV, readings=[_reading(0)]), 0),
             ("in", Inputs(DEV, statuses=[StatusUpdate("dev-1", False, at(1))]), 1),
             ("in", Inputs(DEV, statuses=[StatusUpdate("dev-1", True, at(1.5))]), 1.5),
             ("tick", None, 2)],
            [("due", 3), ("due", 1), ("due", 4.5), ("due", 4.5)], id="back-online-before-tick"),
    ],
)  # fmt: skip
def test_no_data(steps: list[tuple[str, Any, float]], expected: list[Any]) -> None:
    assert _run_time(rule(**NO_DATA), steps) == expected


def _bag(m: float, typ: str, **attrs: Any) -> Event:
    return Event(at(m), "waste-1", typ, bag_id="B1", attrs=attrs)


H36, H48 = 36 * 60, 48 * 60
STORAGE = {"kind": "waste_storage", "warn_s": 36 * 3600, "limit_s": 48 * 3600}


@pytest.mark.parametrize(
    ("body", "steps", "expected"),
    [
        pytest.param(STORAGE,
                     [("in", Inputs(events=[_bag(0, "bag_stored")]), 0), ("tick", None, H36 - 1),
                      ("tick", None, H36), ("tick", None, H48),
                      ("in", Inputs(events=[_bag(H48 + 60, "bag_collected")]), H48 + 60)],
                     [("due", H36), ("due", H36), ("fire", H36, H36, "warning"), ("due", H48),
                      ("escalate", H48, "critical"), ("resolve", H48 + 60)],
                     id="storage-warn-36h-critical-48h"),
        pytest.param(STORAGE,
                     [("in", Inputs(events=[_bag(0, "bag_stored"),
                                            _bag(H36 + 60, "bag_collected")]), H36 + 60)],
                     [("fire", H36, H36, "warning"), ("resolve", H36 + 60)],
                     id="storage-late-upload-retrospective"),
        pytest.param(STORAGE,
                     [("in", Inputs(events=[_bag(0, "bag_stored"), _bag(600, "bag_collected")]),
                       600), ("tick", None, H48)], [], id="storage-collected-in-time"),
        pytest.param({"kind": "waste_weight"},
                     [("in", Inputs(events=[_bag(0, "bag_sealed", weight_kg=2.4),
                                            _bag(60, "bag_collected", weight_kg=2.59)]), 60)],
                     [], id="weight-within-0.2kg"),
        pytest.param({"kind": "waste_weight"},
                     [("in", Inputs(events=[_bag(0, "bag_sealed", weight_kg=2.4)]), 0),
                      ("in", Inputs(events=[_bag(60, "bag_collected", weight_kg=2.7)]), 60)],
                     [("fire", 60, 60, "warning")], id="weight-beyond-0.2kg"),
        pytest.param({"kind": "waste_weight"},
                     [("in", Inputs(events=[_bag(0, "bag_sealed", weight_kg=10),
                                            _bag(60, "bag_collected", weight_kg=10.45)]), 60)],
                     [], id="weight-within-5pct"),
        pytest.param({"kind": "waste_weight"},
                     [("in", Inputs(events=[_bag(60, "bag_collected", weight_kg=9.0)]), 60),
                      ("in", Inputs(events=[_bag(0, "bag_sealed", weight_kg=10)]), 70)],
                     [("fire", 60, 60, "warning")], id="weight-seal-arrives-late"),
        pytest.param({"kind": "waste_unsealed", "grace_s": 600},
                     [("in", Inputs(events=[_bag(0, "bag_collected", weight_kg=1)]), 0),
                      ("tick", None, 9), ("tick", None, 10),
                      ("in", Inputs(events=[_bag(-30, "bag_sealed", weight_kg=1)]), 20)],
                     [("due", 10), ("due", 10), ("fire", 0, 10, "warning"), ("resolve", 20)],
                     id="collected-never-sealed"),
        pytest.param({"kind": "waste_unsealed", "grace_s": 600},
                     [("in", Inputs(events=[_bag(0, "bag_collected")]), 0),
                      ("in", Inputs(events=[_bag(-5, "bag_sealed")]), 2), ("tick", None, 10)],
                     [("due", 10)], id="seal-within-grace"),
        pytest.param({"kind": "waste_not_stored", "limit_s": 86400},
                     [("in", Inputs(events=[_bag(0, "bag_sealed")]), 0), ("tick", None, 1440),
                      ("in", Inputs(events=[_bag(1500, "bag_stored")]), 1500)],
                     [("due", 1440), ("fire", 1440, 1440, "warning"), ("resolve", 1500)],
                     id="sealed-never-stored"),
    ],
)  # fmt: skip
def test_waste_bag_rules(
    body: dict[str, Any], steps: list[tuple[str, Any, float]], expected: list[Any]
) -> None:
    assert _run_time(rule(**body), steps) == expected


def _member(dev: str, seen_m: float | None, iv: float = 60, offline: bool = False) -> Member:
    seen = None if seen_m is None else at(seen_m).timestamp()
    due = None if seen is None or offline else seen + 3 * iv
    return Member(dev, seen, due, offline, iv)


@pytest.mark.parametrize(
    ("members", "now_m", "expected"),
    [
        pytest.param([_member("a", 0), _member("b", 0.5), _member("c", 0.8)], 3.9,
                     (True, set()), id="all-silent"),
        pytest.param([_member("a", 0), _member("b", 0.5), _member("c", 0.8)], 3.0,
                     (False, {"a"}), id="first-due-held-while-siblings-quiet"),
        pytest.param([_member("a", 0), _member("b", 2.5), _member("c", 2.9)], 3.0,
                     (False, set()), id="siblings-reporting-so-device-alone"),
        pytest.param([_member("a", 0, offline=True), _member("b", 10)], 11,
                     (False, set()), id="one-up"),
        pytest.param([_member("a", 0)], 10, (False, set()), id="single-device-site"),
    ],
)  # fmt: skip
def test_site_verdict(members: list[Member], now_m: float, expected: tuple[bool, set[str]]) -> None:
    assert site_verdict(members, at(now_m), min_devices=2) == expected
