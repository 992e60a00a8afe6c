"""The pure simulation layer: realistic clean signals, determinism, faults as data, and a
ground truth that explains every limit crossing."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ingest import CATALOGUE
from simulators import (
    ALL_RULE_IDS,
    KINDS,
    REFERENCE_RULES,
    FaultSpecError,
    Fleet,
    Injection,
    Message,
    TruthRecord,
    build_fleet,
    parse_faults,
)
from simulators.faults import MALFORMED_REASONS
from simulators.rules import RefRule, Tracker, rules_for

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC).timestamp()  # 08:00 in China
HOUR, DAY = 3600.0, 86400.0

# What a person looking at a chart would call normal, per domain/profile and metric.
REALISTIC: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    # A cluster of door openings may lift a fridge above 8 °C for minutes: that is why
    # the heat rule has a 30-minute `for`; the no-natural-episode check below holds it.
    ("coldchain", "fridge"): {"temp_c": (2.5, 9.5), "rh_pct": (20, 80), "battery_v": (3.5, 4.3)},
    ("coldchain", "freezer"): {"temp_c": (-25.0, -14.0)},
    ("coldchain", "ultra_low"): {"temp_c": (-80.0, -60.0)},
    ("coldchain", "cold_box"): {"temp_c": (2.0, 8.0), "battery_v": (3.4, 4.3)},
    ("air", "general"): {
        "co2_ppm": (380, 1500),
        "pm25_ugm3": (0, 75),
        "pm10_ugm3": (0, 150),
        "hcho_mgm3": (0, 0.08),
        "tvoc_mgm3": (0, 0.6),
        "temp_c": (16, 28),
        "rh_pct": (25, 80),
        "co_mgm3": (0, 10),
    },
    ("air", "sleeping"): {"co2_ppm": (380, 1000), "hcho_mgm3": (0, 0.08)},
    ("water", "plant_outlet"): {
        "free_chlorine_mgl": (0.3, 2.0),
        "turbidity_ntu": (0, 1.0),
        "ph": (6.5, 8.5),
        "conductivity_uscm": (100, 1400),
        "water_temp_c": (0, 35),
    },
    ("water", "tap"): {
        "free_chlorine_mgl": (0.05, 2.0),
        "turbidity_ntu": (0, 1.0),
        "ph": (6.5, 8.5),
    },
    ("water", "secondary_supply"): {"free_chlorine_mgl": (0.05, 2.0), "ph": (6.5, 8.5)},
    ("pool", "indoor"): {
        "free_chlorine_mgl": (0.3, 1.0),
        "combined_chlorine_mgl": (0, 0.4),
        "ph": (7.0, 7.8),
        "urea_mgl": (0, 3.5),
        "orp_mv": (650, 850),
        "turbidity_ntu": (0, 1.0),
        "water_temp_c": (23, 30),
    },
    ("wastewater", "infectious"): {
        "total_residual_chlorine_mgl": (6.5, 10),
        "ph": (6, 9),
        "cod_mgl": (0, 60),
    },
    ("wastewater", "general_discharge"): {
        "total_residual_chlorine_mgl": (3, 10),
        "cod_mgl": (0, 60),
    },
    ("wastewater", "general_pretreatment"): {
        "total_residual_chlorine_mgl": (2, 8),
        "cod_mgl": (0, 250),
    },
    ("waste", "storage_room"): {"temp_c": (10, 20), "rh_pct": (30, 85), "fill_pct": (0, 100)},
}
DOMAIN_SIZES = {"coldchain": 10, "air": 5, "water": 6, "pool": 3, "wastewater": 5, "waste": 3}


def samples(msg: Message) -> list[dict[str, Any]]:
    body = orjson.loads(msg.payload)
    batch: list[dict[str, Any]] = body.get("batch", [body])
    return batch


def telemetry(messages: list[Message]) -> list[tuple[Message, dict[str, Any]]]:
    return [(m, s) for m in messages if m.topic.endswith("/telemetry") for s in samples(m)]


@pytest.fixture(scope="module")
def clean_runs() -> dict[str, tuple[Fleet, Any]]:
    out = {}
    for domain, n in DOMAIN_SIZES.items():
        fleet = build_fleet(domain, n, seed=11)
        out[domain] = (fleet, fleet.simulate(START, START + DAY))
    return out


@pytest.mark.parametrize("domain", list(DOMAIN_SIZES))
def test_clean_signals_stay_within_realistic_bounds(
    domain: str, clean_runs: dict[str, tuple[Fleet, Any]]
) -> None:
    fleet, result = clean_runs[domain]
    profile = {s.device_id: s.profile for s in fleet.specs}
    seen: Counter[str] = Counter()
    for msg, sample in telemetry(result.messages):
        bounds = REALISTIC.get((domain, profile[msg.device_id]), {})
        for metric, value in sample["values"].items():
            assert metric in CATALOGUE[domain], metric
            assert value is not None and CATALOGUE[domain][metric].in_range(value)
            if metric in bounds:
                lo, hi = bounds[metric]
                assert lo <= value <= hi, (msg.device_id, metric, value, sample["ts"])
                seen[metric] += 1
    assert seen, "no bounded metric checked"
    # Clean: nothing for a rule pack to alert on (cold boxes do lose coverage in transport).
    assert all(r.kind == "backlog" and not r.injected for r in result.truth), result.truth[:3]


def test_cold_boxes_upload_their_coverage_gaps_as_batches(
    clean_runs: dict[str, tuple[Fleet, Any]],
) -> None:
    fleet, result = clean_runs["coldchain"]
    boxes = {s.device_id for s in fleet.specs if s.profile == "cold_box"}
    batches = [m for m in result.messages if m.device_id in boxes and b'"batch"' in m.payload]
    gaps = [r for r in result.truth if r.device_id in boxes]
    assert batches and len(batches) == len(gaps)


def test_profiles_ids_and_sites_are_registry_ready() -> None:
    fleet = build_fleet("all", 60, seed=1, prefix="x")
    assert {s.domain for s in fleet.specs} == set(CATALOGUE)
    profiles = {(s.domain, s.profile) for s in fleet.specs}
    for p in ("fridge", "freezer", "cold_box", "plant_outlet", "tap", "secondary_supply"):
        assert p in {pp for _, pp in profiles}
    for p in ("infectious", "general_discharge", "general_pretreatment"):
        assert ("wastewater", p) in profiles
    site_ids = {s.site_id for s in fleet.sites}
    assert all(s.site_id in site_ids and s.expected_interval_s > 0 for s in fleet.specs)
    assert len({s.device_id for s in fleet.specs}) == 60
    with pytest.raises(ValueError, match="not"):
        build_fleet("coldchain", 1, prefix="bad prefix!")


def test_same_seed_gives_the_same_messages_and_truth() -> None:
    def run(seed: int) -> tuple[list[tuple[float, str, bytes]], list[dict[str, Any]]]:
        fleet = build_fleet("all", 12, seed=seed, faults="all=0.3")
        res = fleet.simulate(START, START + 6 * HOUR)
        return [(m.at, m.topic, m.payload) for m in res.messages], [r.to_json() for r in res.truth]

    a, b, c = run(5), run(5), run(6)
    assert a == b
    assert a[0] != c[0]


def test_faults_do_not_change_the_clean_signal_outside_their_window() -> None:
    inj = [Injection("drift", START + 2 * HOUR, duration_s=HOUR, metric="temp_c")]
    clean = build_fleet("coldchain", 1, seed=3, profile="fridge").simulate(START, START + 5 * HOUR)
    faulty = build_fleet("coldchain", 1, seed=3, profile="fridge", injections=inj)
    res = faulty.simulate(START, START + 5 * HOUR)
    a = {s["seq"]: s["values"]["temp_c"] for _, s in telemetry(clean.messages)}
    b = {s["seq"]: s["values"]["temp_c"] for m, s in telemetry(res.messages)}
    (rec,) = res.truth
    window = {s["seq"] for m, s in telemetry(res.messages) if rec.start <= m.at < rec.end}
    assert window and all(a[q] == b[q] for q in a if q not in window)
    assert all(b[q] >= a[q] for q in window)
    last = max(window)
    assert b[last] - a[last] >= 0.2  # drifted upwards, towards the heat limit


@pytest.mark.parametrize(
    ("duration_s", "expected"),
    [(600.0, None), (2 * HOUR, "coldchain.heat")],
)
def test_excursion_expects_an_alert_only_when_it_outlasts_the_rule(
    duration_s: float, expected: str | None
) -> None:
    inj = [Injection("excursion", START + HOUR, duration_s=duration_s, variant="heat")]
    fleet = build_fleet("coldchain", 1, seed=2, profile="fridge", injections=inj)
    (rec,) = fleet.simulate(START, START + 8 * HOUR).truth
    assert (rec.kind, rec.metric, rec.variant) == ("excursion", "temp_c", "heat")
    assert rec.expected_rule == expected
    assert rec.end - rec.start == pytest.approx(duration_s, abs=60)
    if expected:
        assert rec.expected_at is not None
        assert rec.expected_at - rec.start >= 1800
        assert rec.detail["rule"] == {"op": ">", "for_s": 1800.0, "high": 8.0}


def test_power_cut_follows_the_warming_curve_and_expects_a_heat_alert() -> None:
    inj = [Injection("power_cut", START + HOUR, duration_s=4 * HOUR)]
    fleet = build_fleet("coldchain", 1, seed=4, profile="fridge", injections=inj)
    res = fleet.simulate(START, START + 10 * HOUR)
    (rec,) = [r for r in res.truth if r.kind == "power_cut"]
    assert rec.expected_rule == "coldchain.heat"
    temps = [(m.at, s["values"]["temp_c"]) for m, s in telemetry(res.messages)]
    during = [v for at, v in temps if rec.start <= at < rec.end]
    # Warming: monotone apart from sensor noise, and it passes 8 °C.
    assert during[-1] > 8.0 > during[0]
    assert all(b >= a - 0.3 for a, b in itertools.pairwise(during))
    after = [v for at, v in temps if at > rec.end + HOUR]
    assert max(after) <= 8.0
    events = [orjson.loads(m.payload)["type"] for m in res.messages if "/event" in m.topic]
    assert "power_loss" in events and "power_restored" in events


def _violates(rule: RefRule, value: float) -> bool:
    return not rule.window_s and rule.violated(value)


@pytest.mark.parametrize("domain", ["coldchain", "water", "pool", "wastewater", "waste"])
def test_limits_are_crossed_only_where_the_truth_says(domain: str) -> None:
    fleet = build_fleet(
        domain, 6, seed=21, faults="excursion=0.1,drift=0.05,spike=0.2,power_cut=0.05"
    )
    res = fleet.simulate(START, START + DAY)
    profile = {s.device_id: s.profile for s in fleet.specs}
    windows: dict[str, list[TruthRecord]] = {}
    for r in res.truth:
        assert r.injected or r.kind == "backlog", r
        windows.setdefault(r.device_id, []).append(r)
    crossings = 0
    for msg, sample in telemetry(res.messages):
        at = msg.at
        for rule in rules_for(domain, profile[msg.device_id]):
            v = sample["values"].get(rule.metric)
            if v is None or not _violates(rule, v):
                continue
            crossings += 1
            explained = [
                r
                for r in windows.get(msg.device_id, [])
                if r.start <= at <= r.end + 4 * HOUR and r.kind != "backlog"
            ]
            assert explained, (msg.device_id, rule.rule_id, v, sample["ts"])
    assert crossings > 0
    expected = [r for r in res.truth if r.expected_rule]
    assert expected and all(r.expected_rule in ALL_RULE_IDS for r in expected)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("offline", {}),
        ("backlog", {}),
        ("out_of_order", {}),
        ("duplicate", {}),
        ("malformed", {"variant": "truncated"}),
        ("malformed", {"variant": "not_utf8"}),
        ("unknown_metric", {}),
        ("clock_skew", {"variant": "86400"}),
        ("out_of_range", {"duration_s": 600.0}),
        ("sensor_error", {"duration_s": 600.0}),
        ("stuck", {"duration_s": 2 * HOUR}),
    ],
)
def test_delivery_and_sensor_faults_say_what_the_service_should_do(
    kind: str, extra: dict[str, Any]
) -> None:
    inj = [Injection(kind, START + HOUR, **extra)]
    fleet = build_fleet("water", 1, seed=8, injections=inj)
    res = fleet.simulate(START, START + 6 * HOUR)
    (rec,) = [r for r in res.truth if r.kind == kind]
    assert rec.injected and not rec.open
    want: dict[str, tuple[str | None, str | None, bool]] = {
        "offline": ("device.offline", None, False),
        "backlog": ("device.offline", None, False),
        "duplicate": (None, None, True),
        "malformed": (None, MALFORMED_REASONS.get(extra.get("variant", "")), False),
        "unknown_metric": (None, "unknown_metric", False),
        "clock_skew": (None, "future_timestamp", False),
        "out_of_range": ("device.sensor_fault", "out_of_physical_range", False),
        "sensor_error": ("device.sensor_fault", None, False),
        "stuck": ("device.stuck", None, False),
    }
    if kind in want:
        assert (rec.expected_rule, rec.expect_rejected, rec.expect_dedup) == want[kind]
    json_line = orjson.loads(orjson.dumps(rec.to_json()))
    assert set(json_line) >= {"device_id", "metric", "kind", "start", "end", "expected_rule"}


@pytest.mark.parametrize("kind", ["bag_overdue", "weight_mismatch", "unsealed_bag"])
def test_waste_faults_show_in_the_bag_events(kind: str) -> None:
    inj = [Injection(kind, START + HOUR)]
    fleet = build_fleet("waste", 1, seed=9, injections=inj)
    res = fleet.simulate(START, START + 4 * DAY)
    events = [orjson.loads(m.payload) for m in res.messages if m.topic.endswith("/event")]
    sealed = {e["bag_id"]: e for e in events if e["type"] == "bag_sealed"}
    stored = {e["bag_id"]: e for e in events if e["type"] == "bag_stored"}
    collected = {e["bag_id"]: e for e in events if e["type"] == "bag_collected"}
    assert sealed and set(stored) <= set(sealed)
    (rec,) = [r for r in res.truth if r.kind == kind]
    bag = rec.detail["bag_id"]

    def ts(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["ts"]).timestamp()

    if kind == "bag_overdue":
        assert rec.expected_rule == "waste.storage_overdue"
        assert ts(collected[bag]) - ts(stored[bag]) > 48 * HOUR
    elif kind == "weight_mismatch":
        assert rec.expected_rule == "waste.weight_mismatch"
        diff = abs(collected[bag]["weight_kg"] - sealed[bag]["weight_kg"])
        assert diff > max(0.2, 0.05 * sealed[bag]["weight_kg"])
    else:
        assert rec.expected_rule == "waste.collected_unsealed"
        assert bag in collected and bag not in sealed
    # Every other bag: stored within hours, collected within 48 h, weights agree.
    for b, e in collected.items():
        if b == bag:
            continue
        assert ts(e) - ts(stored[b]) < 48 * HOUR
        assert abs(e["weight_kg"] - sealed[b]["weight_kg"]) <= max(0.2, 0.05 * e["weight_kg"])


def test_batches_hold_at_most_1000_samples() -> None:
    inj = [Injection("backlog", START + 60, duration_s=1500 * 2.0)]
    fleet = build_fleet("air", 1, seed=1, injections=inj, interval_s=2.0)
    res = fleet.simulate(START, START + 3600)
    sizes = [len(orjson.loads(m.payload)["batch"]) for m in res.messages if b"batch" in m.payload]
    assert sizes and max(sizes) <= 1000 and sum(sizes) >= 1499


def test_parse_faults() -> None:
    assert parse_faults("excursion=0.01, offline=0.002") == {"excursion": 0.01, "offline": 0.002}
    assert set(parse_faults("all=1")) == set(KINDS)
    for bad in ("nope=1", "excursion", "excursion=x", "offline=-1"):
        with pytest.raises(FaultSpecError):
            parse_faults(bad)


@pytest.mark.parametrize(
    ("rule", "series", "fires_at"),
    [
        (RefRule("r", "d", "m", ">", high=8.0, for_s=1800), [(0, 9), (1200, 9), (1800, 9)], 1800),
        (RefRule("r", "d", "m", ">", high=8.0, for_s=1800), [(0, 9), (1200, 7), (1800, 9)], None),
        (RefRule("r", "d", "m", "<=", low=-0.5, for_s=0), [(0, 0), (60, -0.5)], 60),
        (RefRule("r", "d", "m", "outside", low=6, high=9, for_s=0), [(0, 7), (60, 9.5)], 60),
        (RefRule("r", "d", "m", ">", high=10, window_s=100), [(0, 0), (50, 30), (99, 30)], 99),
        (RefRule("r", "d", "m", ">", high=10, window_s=100), [(0, 30), (50, 0)], None),
    ],
)
def test_reference_rule_tracker(
    rule: RefRule, series: list[tuple[float, float]], fires_at: float | None
) -> None:
    tr = Tracker(rule)
    fired = [ts for ts, v in series if tr.feed(ts, v)]
    assert fired == ([] if fires_at is None else [fires_at])


def test_every_reference_rule_names_a_catalogue_metric() -> None:
    for rule in REFERENCE_RULES:
        assert rule.metric in CATALOGUE[rule.domain]


@pytest.mark.parametrize(("outage_after_s", "expected"), [(None, "device.stuck"), (600.0, None)])
def test_a_stuck_sensor_the_service_barely_saw_is_not_expected_to_alert(
    outage_after_s: float | None, expected: str | None
) -> None:
    """The truth says what the service can know: a value frozen for two hours is a stuck
    alert, unless the device went offline ten minutes into it and came back unfrozen."""
    inj = [Injection("stuck", START + HOUR, duration_s=2 * HOUR)]
    if outage_after_s is not None:
        inj.append(Injection("offline", START + HOUR + outage_after_s, duration_s=2.5 * HOUR))
    fleet = build_fleet("water", 1, seed=8, injections=inj)
    res = fleet.simulate(START, START + 6 * HOUR)
    (rec,) = [r for r in res.truth if r.kind == "stuck"]
    assert rec.expected_rule == expected


def test_a_bag_finding_follows_the_bag_events_the_service_received() -> None:
    """A bag sealed while its storage-room device was offline and then collected with
    the wrong weight: the service never saw the sealing, so what it can find is a bag
    collected unsealed, and that is what the truth expects of it."""
    inj = [
        Injection("offline", START, device=0, duration_s=5 * HOUR),  # 08:00-13:00 local
        Injection("weight_mismatch", START + HOUR),
    ]
    fleet = build_fleet("waste", 1, seed=9, injections=inj)
    res = fleet.simulate(START, START + 2 * DAY)
    (rec,) = [r for r in res.truth if r.kind == "weight_mismatch"]
    bag = rec.detail["bag_id"]
    published = {
        orjson.loads(m.payload)["type"]
        for m in res.messages
        if m.topic.endswith("/event") and orjson.loads(m.payload).get("bag_id") == bag
    }
    assert "bag_sealed" not in published and "bag_collected" in published
    assert rec.expected_rule == "waste.collected_unsealed"
    assert "bag_sealed" in rec.detail["undelivered"]
