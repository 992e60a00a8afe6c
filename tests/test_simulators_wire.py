"""Every fault kind produces on the real broker what its truth record claims."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from healthmon.settings import Settings
from ingest import CATALOGUE
from simulators import (
    Fleet,
    Injection,
    Message,
    MqttTransport,
    Received,
    Subscriber,
    TruthRecord,
    build_fleet,
    play,
    publish,
    publish_sync,
    read_truth,
)
from simulators import cli as sim_cli

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0
Broker = tuple[str, int]


@dataclass
class Wire:
    """What the broker delivered for one run, next to what the model produced."""

    fleet: Fleet
    messages: list[Message]
    truth: list[TruthRecord]
    received: list[Received]

    def on(self, channel: str) -> list[Received]:
        return [r for r in self.received if r.topic.endswith("/" + channel)]

    def samples(self) -> list[tuple[Received, dict[str, Any]]]:
        out: list[tuple[Received, dict[str, Any]]] = []
        for r in self.on("telemetry"):
            try:
                body = orjson.loads(r.payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict) and isinstance(body.get("values", {}), dict):
                out.extend((r, s) for s in body.get("batch", [body]))
        return out


def ts_of(sample: dict[str, Any]) -> float:
    ts = sample["ts"]
    return ts / 1000.0 if isinstance(ts, int) else datetime.fromisoformat(ts).timestamp()


def within(rec: TruthRecord, t: float) -> bool:
    """t in [start, end) of a truth record; payload times carry milliseconds only."""
    return rec.start - 0.001 <= t < rec.end - 0.001


def clear_retained(broker: Broker, fleet: Fleet, prefix: str) -> None:
    with MqttTransport(*broker, client_id_prefix=f"{prefix}-clear") as t:
        for s in fleet.specs:
            t.send(
                Message(0, s.device_id, f"hm/v1/{s.domain}/{s.device_id}/status", b"", retain=True)
            )


@pytest.fixture
def on_broker(mqtt_broker: Broker, uid: Callable[[str], str]) -> Iterator[Callable[..., Wire]]:
    """Runs a fleet onto the real broker at full speed and collects what arrives."""
    cleanups: list[tuple[Fleet, str]] = []

    def run(fleet: Fleet, start: float, end: float) -> Wire:
        prefix = uid("simwire")
        cleanups.append((fleet, prefix))
        res = fleet.simulate(start, end)
        topics = [f"hm/v1/{s.domain}/{s.device_id}/#" for s in fleet.specs]
        with Subscriber(*mqtt_broker, topics, client_id=f"{prefix}-sub") as sub:
            # In chunks, each awaited at the subscriber: the machine's Mosquitto keeps
            # only 1000 queued messages per client (its defaults), and a subscriber
            # that falls behind a full-speed burst on a busy machine would lose some.
            sent = 0
            with MqttTransport(*mqtt_broker, client_id_prefix=prefix) as transport:
                for i in range(0, len(res.messages), 400):
                    chunk = res.messages[i : i + 400]
                    sent += publish_sync(chunk, transport).messages
                    assert sub.wait_for(lambda got, n=sent: len(got) >= n, 15.0), (
                        len(sub.snapshot()),
                        sent,
                    )
            assert sent == len(res.messages)
            expected = len(res.messages)  # each drop comes back as its Last Will
            assert sub.wait_for(lambda got: len(got) >= expected, 15.0), (
                len(sub.snapshot()),
                expected,
            )
            received = sub.snapshot()
        return Wire(fleet, res.messages, res.truth, received)

    yield run
    for fleet, prefix in cleanups:
        clear_retained(mqtt_broker, fleet, prefix)


def one(fleet_domain: str, prefix_uid: Callable[[str], str], inj: Injection, **kw: Any) -> Fleet:
    return build_fleet(
        fleet_domain, 1, seed=5, prefix=prefix_uid("t"), injections=[inj], natural=False, **kw
    )


def the_record(wire: Wire, kind: str) -> TruthRecord:
    recs = [r for r in wire.truth if r.kind == kind]
    assert len(recs) == 1, wire.truth
    return recs[0]


def test_the_wire_carries_exactly_the_model_messages(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    fleet = build_fleet("all", 6, seed=3, prefix=uid("t"), faults="all=0.5")
    wire = on_broker(fleet, START, START + 2 * HOUR)
    sent = Counter((m.topic, m.payload) for m in wire.messages if m.action == "publish")
    wills = Counter((m.topic, m.payload) for m in wire.messages if m.action == "drop")
    got = Counter((r.topic, r.payload) for r in wire.received)
    assert got == sent + wills
    # Status is retained, telemetry and events are not.
    assert all(m.retain == m.topic.endswith("/status") for m in wire.messages)


def test_offline_cuts_the_link_and_the_broker_publishes_the_last_will(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    inj = Injection("offline", START + 600, duration_s=1200)
    wire = on_broker(one("coldchain", uid, inj, profile="fridge"), START, START + HOUR)
    rec = the_record(wire, "offline")
    assert rec.expected_rule == "device.offline"
    statuses = [orjson.loads(r.payload) for r in wire.on("status")]
    assert statuses.count({"online": False}) == 1  # only the broker publishes it: the will
    assert statuses[0] == {"online": True} and statuses.count({"online": True}) == 2
    inside = [s for _, s in wire.samples() if within(rec, ts_of(s))]
    assert inside == []


def test_last_will_stays_retained_for_a_device_still_offline(
    on_broker: Callable[..., Wire], uid: Callable[[str], str], mqtt_broker: Broker
) -> None:
    fleet = one("water", uid, Injection("offline", START + 300, duration_s=DAY))
    wire = on_broker(fleet, START, START + HOUR)
    assert the_record(wire, "offline").open
    topic = f"hm/v1/water/{fleet.specs[0].device_id}/status"
    with Subscriber(*mqtt_broker, [topic], client_id=uid("late")) as late:
        assert late.wait_for(lambda got: len(got) >= 1, 5.0)
        (msg,) = late.snapshot()
    assert msg.retain and orjson.loads(msg.payload) == {"online": False}


@pytest.mark.parametrize("kind", ["backlog", "out_of_order"])
def test_backlog_arrives_as_one_batch_after_the_gap(
    kind: str, on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    inj = Injection(kind, START + 600, duration_s=1200, variant="reversed")
    wire = on_broker(one("coldchain", uid, inj, profile="fridge"), START, START + HOUR)
    rec = the_record(wire, kind)
    batches = [
        orjson.loads(r.payload)["batch"] for r in wire.on("telemetry") if b"batch" in r.payload
    ]
    assert len(batches) == 1
    (batch,) = batches
    stamps = [ts_of(s) for s in batch]
    assert len(batch) == rec.detail["samples"] >= 19
    assert all(isinstance(s["ts"], int) for s in batch)  # epoch ms, required in a batch
    assert all(within(rec, t) for t in stamps)
    if kind == "backlog":
        assert stamps == sorted(stamps)
    else:
        assert stamps != sorted(stamps) and sorted(stamps) == sorted(set(stamps))
    singles = [s for r, s in wire.samples() if b"batch" not in r.payload]
    assert not [s for s in singles if within(rec, ts_of(s))]
    assert rec.expected_rule == "device.offline"  # 20 min without data


def test_duplicate_delivers_the_same_reading_twice(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    wire = on_broker(one("pool", uid, Injection("duplicate", START + 600)), START, START + HOUR)
    rec = the_record(wire, "duplicate")
    assert rec.expect_dedup and rec.expected_rule is None
    counts = Counter(r.payload for r in wire.on("telemetry"))
    (dup,) = [p for p, c in counts.items() if c > 1]
    assert counts[dup] == 2 and orjson.loads(dup)["seq"] == rec.detail["seq"]


def test_clock_skew_shifts_the_timestamps(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    inj = Injection("clock_skew", START + 600, duration_s=900, variant="86400")
    wire = on_broker(one("air", uid, inj), START, START + HOUR)
    rec = the_record(wire, "clock_skew")
    assert rec.expect_rejected == "future_timestamp"
    skewed = [ts_of(s) for _, s in wire.samples() if ts_of(s) > START + DAY / 2]
    assert len(skewed) in (15, 16)
    assert all(within(rec, t - DAY) for t in skewed)


@pytest.mark.parametrize("variant", ["truncated", "nan_literal", "not_utf8", "values_not_object"])
def test_malformed_payloads_are_malformed_on_the_wire(
    variant: str, on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    inj = Injection("malformed", START + 600, variant=variant)
    wire = on_broker(one("wastewater", uid, inj), START, START + HOUR)
    rec = the_record(wire, "malformed")
    bad = []
    for r in wire.on("telemetry"):
        try:
            body = orjson.loads(r.payload.decode("utf-8"))
            ok = isinstance(body.get("values"), dict)
        except (UnicodeDecodeError, orjson.JSONDecodeError):
            ok = False
        if not ok:
            bad.append(r.payload)
    assert len(bad) == 1
    if rec.expect_rejected == "bad_encoding":
        with pytest.raises(UnicodeDecodeError):
            bad[0].decode("utf-8")
    assert (
        rec.expect_rejected
        == {
            "truncated": "bad_json",
            "nan_literal": "bad_json",
            "not_utf8": "bad_encoding",
            "values_not_object": "schema",
        }[variant]
    )


def test_unknown_metric_and_out_of_range_values_on_the_wire(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    injs = [
        Injection("unknown_metric", START + 600, metric="temp_f"),
        Injection("out_of_range", START + 1200, duration_s=300, metric="temp_c"),
        Injection("sensor_error", START + 2400, duration_s=300, metric="temp_c"),
    ]
    fleet = build_fleet(
        "coldchain", 1, seed=5, prefix=uid("t"), profile="fridge", injections=injs, natural=False
    )
    wire = on_broker(fleet, START, START + HOUR)
    unknown = [s for _, s in wire.samples() if "temp_f" in s["values"]]
    assert (
        len(unknown) == 1 and the_record(wire, "unknown_metric").expect_rejected == "unknown_metric"
    )
    temp = CATALOGUE["coldchain"]["temp_c"]
    oor = [
        s
        for _, s in wire.samples()
        if s["values"]["temp_c"] is not None and not temp.in_range(s["values"]["temp_c"])
    ]
    rec = the_record(wire, "out_of_range")
    assert len(oor) == rec.detail["bad_samples"] == 5
    assert (
        rec.expect_rejected == "out_of_physical_range"
        and rec.expected_rule == "device.sensor_fault"
    )
    nulls = [s for _, s in wire.samples() if s["values"]["temp_c"] is None]
    assert (
        len(nulls) == 5 and the_record(wire, "sensor_error").expected_rule == "device.sensor_fault"
    )


@pytest.mark.parametrize(
    ("kind", "domain", "metric"),
    [("stuck", "air", "co2_ppm"), ("drift", "water", "ph"), ("spike", "pool", "ph")],
)
def test_sensor_faults_change_only_their_metric_in_their_window(
    kind: str, domain: str, metric: str, on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    prefix = uid("t")
    inj = Injection(kind, START + 600, duration_s=1800, metric=metric)
    clean = build_fleet(domain, 1, seed=5, prefix=prefix, natural=False)
    faulty = build_fleet(domain, 1, seed=5, prefix=prefix, injections=[inj], natural=False)
    wire = on_broker(faulty, START, START + HOUR)
    rec = the_record(wire, kind)
    base = {s["seq"]: s["values"] for _, s in Wire(clean, [], [], []).samples()}
    base = {
        (b := orjson.loads(m.payload))["seq"]: b["values"]
        for m in clean.simulate(START, START + HOUR).messages
        if m.topic.endswith("/telemetry")
    }
    changed = []
    for _, s in wire.samples():
        for k, v in s["values"].items():
            if v != base[s["seq"]][k]:
                changed.append((s["seq"], k, ts_of(s)))
    assert changed and {k for _, k, _ in changed} <= {metric, "orp_mv"}
    assert all(rec.start - 0.001 <= t <= rec.end + 0.001 for _, _, t in changed)
    seqs = sorted({q for q, k, _ in changed if k == metric})
    if kind == "spike":
        assert len(seqs) == 1
    else:
        window = [s["values"][metric] for _, s in wire.samples() if within(rec, ts_of(s))]
        if kind == "stuck":
            assert len(set(window)) == 1 and len(window) == 30
        else:
            assert window[-1] < base[seqs[-1]][metric] or window[-1] < window[0]


def test_excursion_and_power_cut_show_on_the_wire(
    on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    injs = [
        Injection("excursion", START + 600, duration_s=2 * HOUR, variant="heat"),
        Injection("power_cut", START + 5 * HOUR, duration_s=3 * HOUR),
    ]
    fleet = build_fleet(
        "coldchain", 1, seed=5, prefix=uid("t"), profile="fridge", injections=injs, natural=False
    )
    wire = on_broker(fleet, START, START + 10 * HOUR)
    exc, cut = the_record(wire, "excursion"), the_record(wire, "power_cut")
    assert exc.expected_rule == cut.expected_rule == "coldchain.heat"
    hot = [ts_of(s) for _, s in wire.samples() if s["values"]["temp_c"] > 8.0]
    assert hot and all(
        exc.start <= t <= exc.end + HOUR or cut.start <= t <= cut.end + HOUR for t in hot
    )
    events = [orjson.loads(r.payload)["type"] for r in wire.on("event")]
    assert events.count("power_loss") == events.count("power_restored") == 1
    off = [s for _, s in wire.samples() if s["values"]["power_ok"] == 0]
    assert len(off) == 180


@pytest.mark.parametrize("kind", ["bag_overdue", "weight_mismatch", "unsealed_bag"])
def test_waste_bag_faults_on_the_wire(
    kind: str, on_broker: Callable[..., Wire], uid: Callable[[str], str]
) -> None:
    wire = on_broker(one("waste", uid, Injection(kind, START + HOUR)), START, START + 3.5 * DAY)
    rec = the_record(wire, kind)
    events = [orjson.loads(r.payload) for r in wire.on("event")]
    by = {(e["type"], e["bag_id"]): e for e in events}
    bag = rec.detail["bag_id"]
    collected = by[("bag_collected", bag)]
    if kind == "bag_overdue":
        stored = by[("bag_stored", bag)]
        assert ts_of(collected) - ts_of(stored) > 48 * HOUR
    elif kind == "weight_mismatch":
        sealed = by[("bag_sealed", bag)]
        assert abs(collected["weight_kg"] - sealed["weight_kg"]) > 0.2
    else:
        assert ("bag_sealed", bag) not in by
    assert {"manifest_no", "collector", "weight_kg"} <= set(collected)


def test_load_mode_holds_a_fixed_total_rate_over_few_connections(
    mqtt_broker: Broker, uid: Callable[[str], str]
) -> None:
    prefix = uid("t")
    rate, n = 2000.0, 500
    fleet = build_fleet("air", n, seed=1, prefix=prefix, interval_s=n / rate)
    items = (
        m for m in fleet.run(START) if isinstance(m, Message) and m.topic.endswith("/telemetry")
    )
    with (
        Subscriber(
            *mqtt_broker,
            [f"hm/v1/air/{prefix}-air-00{i:03d}/telemetry" for i in range(0, n, 50)],
            client_id=f"{prefix}-sub",
        ) as sub,
        MqttTransport(*mqtt_broker, connections=2, client_id_prefix=prefix) as transport,
    ):
        stats = publish_sync(items, transport, rate=rate, max_messages=1000)
        assert sub.wait_for(lambda got: len(got) >= 20, 10.0)
    assert stats.messages == transport.sent == 1000
    # 1000 at 2000/s: never faster than the rate; slower only when this machine is busy.
    assert 0.49 <= stats.elapsed_s <= 2.0, stats.elapsed_s


def test_play_paces_simulated_time() -> None:
    fleet = build_fleet("pool", 2, seed=1, natural=False)
    sent: list[tuple[float, float]] = []
    t0 = time.monotonic()
    stats = play(
        fleet.run(START, START + 300),
        lambda m: sent.append((time.monotonic() - t0, m.at - START)),
        speed=1200.0,
        sim_start=START,
    )
    assert stats.messages == len(sent) >= 10
    assert all(wall >= sim / 1200.0 - 0.01 for wall, sim in sent)
    assert stats.sim_end is not None
    assert (stats.sim_end - START) / 1200.0 - 0.01 <= stats.elapsed_s <= 1.5


async def test_async_publish_stops_when_cancelled(
    mqtt_broker: Broker, uid: Callable[[str], str]
) -> None:
    prefix = uid("t")
    fleet = build_fleet("water", 3, seed=2, prefix=prefix)
    try:
        with MqttTransport(*mqtt_broker, client_id_prefix=prefix) as transport:
            task = asyncio.create_task(publish(fleet.run(START), transport, speed=600.0))
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            done = await publish(fleet.run(START, START + 600), transport)
            assert done.messages > 0 and not done.stopped
    finally:
        clear_retained(mqtt_broker, fleet, prefix)


def test_cli_registers_the_fleet_and_writes_the_truth_log(
    mqtt_broker: Broker, pg_dsn: str, uid: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = uid("cli")
    parser = argparse.ArgumentParser()
    sim_cli.register(parser.add_subparsers())
    truth = tmp_path / "truth.jsonl"
    args = parser.parse_args(
        [
            "simulate",
            "--domain", "wastewater", "--devices", "4", "--interval", "60s",
            "--speed", "max", "--duration", "2h", "--faults", "all=1", "--seed", "7",
            "--register", "--truth", str(truth), "--prefix", prefix,
        ]
    )  # fmt: skip
    settings = Settings(mqtt_url=f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", database_url=pg_dsn)
    try:
        assert args.func(args, settings) == 0
    finally:
        clear_retained(mqtt_broker, build_fleet("wastewater", 4, prefix=prefix), prefix)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, domain, profile, expected_interval_s, s.region FROM devices d"
            " JOIN sites s USING (site_id) WHERE device_id LIKE %s ORDER BY 1",
            (prefix + "%",),
        ).fetchall()
    assert len(rows) == 4
    assert {r[2] for r in rows} == {"infectious", "general_discharge", "general_pretreatment"}
    assert all(r[1] == "wastewater" and r[3] == 60 and r[4] for r in rows)
    records = list(read_truth(truth))
    assert records and {r["device_id"] for r in records} <= {r[0] for r in rows}
    assert all(set(r) >= {"kind", "metric", "start", "end", "expected_rule"} for r in records)


def test_stop_event_ends_a_real_time_run() -> None:
    fleet = build_fleet("waste", 1, seed=1)
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    stats = play(fleet.run(START), lambda m: None, speed=1.0, stop=stop)
    timer.join()
    assert stats.stopped and stats.elapsed_s < 2.0
