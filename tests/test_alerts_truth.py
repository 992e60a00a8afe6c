"""Recall and precision against the simulators' ground truth.

A simulated fleet of every domain runs for two days of simulated time; its messages go
through the ingest parser and the alert engine the way the writer hands them over
(windows of two minutes, duplicates removed, only newly stored rows, one transaction
per window, `tick` at each window's end). Every fault the ground-truth log says a rule
should alert on must have raised that alert on that device; a run without faults must
raise none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from alerts import AlertEngine, default_rules
from ingest import DeviceInfo, EvalBatch, RawMessage, Reason
from ingest.payloads import Limits, parse_message
from simulators import Fleet, Message, TruthRecord, build_fleet, register_fleet_async

Conn = psycopg.AsyncConnection[Any]
START = datetime(2026, 11, 20, tzinfo=UTC)
WINDOW = timedelta(minutes=2)  # within the simulators' DETECTION_SLACK_S
FAULTS = (
    "excursion=0.03,stuck=0.01,offline=0.01,out_of_range=0.01,sensor_error=0.01,"
    "power_cut=0.01,backlog=0.01,bag_overdue=0.02,weight_mismatch=0.03,unsealed_bag=0.03"
)
pytestmark = pytest.mark.slow


@dataclass(slots=True)
class Feeder:
    """Plays the writer: parse, dedup, store readings, hand the batch to the engine."""

    engine: AlertEngine
    conn: Conn
    devices: dict[str, DeviceInfo]
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    limits: Limits = field(default_factory=lambda: Limits(retention_days=100_000))

    async def window(self, msgs: list[Message], now: datetime) -> None:
        batch = EvalBatch(devices=self.devices)
        for m in msgs:
            raw = RawMessage(m.topic, m.payload, datetime.fromtimestamp(m.at, UTC), qos=1)
            parsed = parse_message(raw, now=raw.received_at, lookup=self.devices.get,
                                   limits=self.limits)  # fmt: skip
            for r in parsed.readings:
                if (rkey := ("r", r.device_id, r.metric, r.ts)) not in self.seen:
                    self.seen.add(rkey)
                    batch.readings.append(r)
            for e in parsed.events:
                if (key := ("e", e.device_id, e.type, e.ts, e.bag_id)) not in self.seen:
                    self.seen.add(key)
                    batch.events.append(e)
            if parsed.status is not None:
                batch.statuses.append(parsed.status)
            batch.faults += [
                j for j in parsed.rejections if j.reason == Reason.OUT_OF_PHYSICAL_RANGE
            ]
        async with self.conn.transaction():
            if batch.readings:
                async with self.conn.cursor().copy(
                    "COPY readings (ts, device_id, metric, value, received_at) FROM STDIN"
                ) as cp:
                    for r in batch.readings:
                        await cp.write_row((r.ts, r.device_id, r.metric, r.value, r.received_at))
            await self.engine.on_batch(self.conn, batch, now)
        await self.engine.tick(self.conn, now)


async def play(fleet: Fleet, conn: Conn, hours: float) -> list[TruthRecord]:
    await register_fleet_async(conn, fleet)
    devices = {
        s.device_id: DeviceInfo(
            s.device_id, s.domain, s.site_id, s.region, s.profile, s.expected_interval_s
        )
        for s in fleet.specs
    }
    truth: list[TruthRecord] = []
    async with AlertEngine(rules=default_rules(), background=False) as engine:
        feeder = Feeder(engine, conn, devices)
        edge = START + WINDOW
        pending: list[Message] = []
        for item in fleet.run(START, START + timedelta(hours=hours)):
            if isinstance(item, TruthRecord):
                truth.append(item)
                continue
            while datetime.fromtimestamp(item.at, UTC) >= edge:
                await feeder.window(pending, edge)
                pending, edge = [], edge + WINDOW
            pending.append(item)
        await feeder.window(pending, edge)
    return truth


async def alerts_for(conn: Conn, device_ids: Iterable[str]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT rule_id, device_id, subject, started_at, resolved_at, kind FROM alerts"
        " WHERE device_id = ANY(%s) OR subject = ANY(%s) ORDER BY started_at",
        (list(device_ids), [f"site:{d}" for d in device_ids]),
    )
    return list(await cur.fetchall())


def _matches(t: TruthRecord, rule_id: str, a: dict[str, Any]) -> bool:
    slack = 6 * 3600.0
    start = a["started_at"].timestamp()
    end = a["resolved_at"].timestamp() if a["resolved_at"] else float("inf")
    return (
        a["rule_id"] == rule_id
        and a["device_id"] == t.device_id
        and start <= t.end + slack
        and end >= t.start - slack
    )


async def test_every_fault_that_should_alert_does(pg_conn: Conn, uid: Callable[[str], str]) -> None:
    # A fixed prefix: the simulators seed each device's streams with its id, so the fleet
    # (and so the test) is the same on every run. The session's database is its own.
    fleet = build_fleet("all", 24, seed=7, faults=FAULTS, prefix="truth-f")
    truth = await play(fleet, pg_conn, hours=48)
    end = (START + timedelta(hours=48)).timestamp()
    alerts = await alerts_for(pg_conn, [s.device_id for s in fleet.specs])
    expected = [
        (t, rule)
        for t in truth
        # due by the end of the run (a bag overdue at 48 h may be due after it); sensor
        # faults carry no expected time
        if t.expected_rule and (t.expected_at is None or t.expected_at <= end)
        for rule in (t.expected_rule, *t.also_expected)
    ]
    assert len(expected) >= 20, "the run should exercise a good number of faults"
    missed = [
        (t.fault_id, t.kind, rule, t.to_json()["start"])
        for t, rule in expected
        if not any(_matches(t, rule, a) for a in alerts)
    ]
    assert missed == [], f"{len(missed)} of {len(expected)} expected alerts missing: {missed}"
    kinds = {t.expected_rule for t, _ in expected}
    assert {"device.offline", "device.sensor_fault", "device.stuck"} <= kinds


async def test_a_clean_run_raises_no_alert(pg_conn: Conn, uid: Callable[[str], str]) -> None:
    fleet = build_fleet("all", 24, seed=11, faults=None, natural=False, prefix="truth-c")
    truth = await play(fleet, pg_conn, hours=30)
    assert truth == []
    alerts = await alerts_for(pg_conn, [s.device_id for s in fleet.specs])
    assert [(a["rule_id"], a["device_id"], a["started_at"]) for a in alerts] == []
