"""The alert engine on the real database, called the way the ingest writer calls it:
`on_batch` inside a transaction with only newly stored rows, `tick` on the timer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from alerts import (
    AlertEngine,
    ManualResolveNotAllowed,
    NoteRequired,
    acknowledge,
    alert_to_contract_dict,
    default_rules,
    resolve_manually,
)
from ingest import DeviceInfo, EvalBatch, Event, Reading, Reason, Rejection, StatusUpdate

Conn = psycopg.AsyncConnection[Any]
T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
async def engine() -> AsyncIterator[AlertEngine]:
    async with AlertEngine(rules=default_rules(), background=False) as eng:
        yield eng


async def register(conn: Conn, site: str, *devices: DeviceInfo) -> None:
    await conn.execute(
        "INSERT INTO sites (site_id, region) VALUES (%s, 'r-test') ON CONFLICT DO NOTHING",
        (site,),
    )
    for d in devices:
        await conn.execute(
            "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
            " VALUES (%s, %s, %s, %s, %s)",
            (d.device_id, d.domain, site, d.profile, d.expected_interval_s),
        )


def device(uid: Callable[[str], str], profile: str, domain: str = "coldchain",
           site: str = "", interval_s: int = 60) -> DeviceInfo:  # fmt: skip
    return DeviceInfo(uid(profile.replace("_", "")), domain, site or None, "r-test", profile,
                      interval_s)  # fmt: skip


def temps(dev: DeviceInfo, points: Sequence[tuple[float, float]], received: datetime | None = None
          ) -> list[Reading]:  # fmt: skip
    # A little measurement noise (as real sensors have): constant values are `device.stuck`.
    return [
        Reading(at(m), dev.device_id, "temp_c", v + (m % 7) * 0.01, received_at=received or at(m))
        for m, v in points
    ]


async def feed(eng: AlertEngine, conn: Conn, now: datetime, *devs: DeviceInfo,
               **parts: Any) -> None:  # fmt: skip
    """One writer transaction: the batch as the writer hands it over, then commit."""
    batch = EvalBatch(devices={d.device_id: d for d in devs}, **parts)
    async with conn.transaction():
        await eng.on_batch(conn, batch, now)


async def tick(eng: AlertEngine, conn: Conn, now: datetime) -> None:
    async with conn.transaction():
        await eng.tick(conn, now)


async def alerts_of(conn: Conn, *, device_id: str | None = None, subject: str | None = None,
                    rule_id: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT * FROM alerts WHERE (%(d)s::text IS NULL OR device_id = %(d)s)"
        " AND (%(s)s::text IS NULL OR subject = %(s)s)"
        " AND (%(r)s::text IS NULL OR rule_id = %(r)s) ORDER BY started_at, rule_id",
        {"d": device_id, "s": subject, "r": rule_id},
    )
    return list(await cur.fetchall())


async def timeline(conn: Conn, alert_id: Any) -> list[tuple[str, str | None]]:
    cur = await conn.execute(
        "SELECT kind, state FROM alert_events WHERE alert_id = %s ORDER BY id", (alert_id,)
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def test_cold_box_backlog_delivered_late_starts_at_the_excursion(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    box = device(uid, "cold_box", interval_s=300)
    await register(pg_conn, uid("site"), box)
    # Out of coverage for the trip: a logger backlog (5-min records) uploaded 6 h later.
    points = [(m, 5.0) for m in range(0, 60, 5)] + [(m, 9.5) for m in range(60, 120, 5)]
    points += [(m, 5.0) for m in range(120, 180, 5)]
    upload = at(360)
    await feed(engine, pg_conn, upload, box, readings=temps(box, points, received=upload))

    [alert] = await alerts_of(pg_conn, device_id=box.device_id)
    assert alert["rule_id"] == "coldchain.transport_heat"
    assert alert["started_at"] == at(60)
    assert alert["detected_at"] == upload
    assert alert["retrospective"] is True
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(120)
    assert await timeline(pg_conn, alert["id"]) == [("fired", "firing"), ("resolved", "resolved")]
    body = alert_to_contract_dict(alert)
    assert body["started_at"] == "2026-11-23T01:00:00+00:00"
    assert body["retrospective"] is True and body["detected_at"] == upload.isoformat()
    assert body["standard"] and body["kind"] == "value"


async def test_live_alert_is_not_retrospective(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    for m, v in [(0, 9.0), (15, 9.0), (30, 9.2)]:
        await feed(engine, pg_conn, at(m), fridge, readings=temps(fridge, [(m, v)]))
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert (alert["rule_id"], alert["state"], alert["retrospective"]) == (
        "coldchain.heat", "firing", False)  # fmt: skip
    assert alert["started_at"] == at(0) and alert["detected_at"] == at(30)
    assert alert["value"] == pytest.approx(9.22) and alert["threshold"] == 8.0


async def test_restart_mid_episode_and_redelivered_batch_still_one_alert(
    pg_dsn: str, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    first = temps(fridge, [(m, 9.0) for m in range(0, 45, 5)])
    async with AlertEngine(rules=default_rules(), background=False) as eng:
        await feed(eng, pg_conn, at(45), fridge, readings=first)
    assert len(await alerts_of(pg_conn, device_id=fridge.device_id)) == 1

    # A new process: state comes from rule_state, not memory.
    async with AlertEngine(rules=default_rules(), background=False) as eng2:
        more = temps(fridge, [(m, 9.5) for m in range(45, 90, 5)])
        await feed(eng2, pg_conn, at(90), fridge, readings=more)
        await feed(eng2, pg_conn, at(91), fridge, readings=first + more)  # redelivered/replayed
        [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
        assert alert["state"] == "firing" and alert["started_at"] == at(0)
        await feed(eng2, pg_conn, at(95), fridge, readings=temps(fridge, [(95, 5.0)]))
        await feed(eng2, pg_conn, at(96), fridge, readings=first + more)  # old episode again
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(95)
    assert await timeline(pg_conn, alert["id"]) == [("fired", "firing"), ("resolved", "resolved")]


async def test_two_workers_evaluating_the_same_device_open_one_alert(
    pg_dsn: str, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    readings = temps(fridge, [(m, 10.0) for m in range(0, 65, 5)])
    batch = EvalBatch(readings=readings, devices={fridge.device_id: fridge})

    async def worker() -> None:
        async with (
            AlertEngine(rules=default_rules(), background=False) as eng,
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn,
            conn.transaction(),
        ):
            await eng.on_batch(conn, batch, at(65))
            await asyncio.sleep(0.2)  # hold the transaction open: the other must wait

    await asyncio.gather(*(worker() for _ in range(4)))
    alerts = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert [(a["rule_id"], a["state"]) for a in alerts] == [("coldchain.heat", "firing")]
    assert [k for k, _ in await timeline(pg_conn, alerts[0]["id"])] == ["fired"]


async def test_escalates_after_a_longer_duration(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    await feed(engine, pg_conn, at(40), fridge,
               readings=temps(fridge, [(m, 9.0) for m in range(0, 45, 5)]))  # fmt: skip
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert alert["severity"] == "warning"
    await feed(engine, pg_conn, at(125), fridge, readings=temps(fridge, [(125, 9.0)]))
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert alert["severity"] == "critical"
    assert await timeline(pg_conn, alert["id"]) == [("fired", "firing"), ("escalated", "firing")]


async def test_profile_selects_the_limit(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    outlet = device(uid, "plant_outlet", domain="water")
    tap = device(uid, "tap", domain="water")
    await register(pg_conn, uid("site"), outlet, tap)
    rs = [
        Reading(at(m), d.device_id, "free_chlorine_mgl", 0.2, received_at=at(m))
        for d in (outlet, tap)
        for m in range(0, 20, 5)
    ]
    await feed(engine, pg_conn, at(20), outlet, tap, readings=rs)
    got = await alerts_of(pg_conn, device_id=outlet.device_id)
    assert [(a["rule_id"], a["threshold"]) for a in got] == [("water.free_chlorine_low", 0.3)]
    assert "出厂水" in got[0]["standard"]
    assert await alerts_of(pg_conn, device_id=tap.device_id) == []


async def test_offline_fault_and_over_limit_stay_separate(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    await feed(engine, pg_conn, at(40), fridge,
               readings=temps(fridge, [(m, 9.0) for m in range(0, 45, 5)]))  # fmt: skip
    faults = [
        Rejection(Reason.OUT_OF_PHYSICAL_RANGE, "temp_c 150", "t", at(m), fridge.device_id,
                  metric="temp_c", value=150.0, ts=at(m))
        for m in (41, 42)
    ]  # fmt: skip
    nulls = [Reading(at(43), fridge.device_id, "temp_c", None, received_at=at(43))]
    await feed(engine, pg_conn, at(43), fridge, faults=faults, readings=nulls)
    await feed(engine, pg_conn, at(44), fridge,
               statuses=[StatusUpdate(fridge.device_id, False, at(44))])  # fmt: skip
    got = {a["rule_id"]: a for a in await alerts_of(pg_conn, device_id=fridge.device_id)}
    assert {r: (a["kind"], a["state"]) for r, a in got.items()} == {
        "coldchain.heat": ("value", "firing"),  # offline does not resolve (or hide) it
        "device.sensor_fault": ("fault", "firing"),
        "device.offline": ("offline", "firing"),
    }
    assert got["device.offline"]["started_at"] == at(44)  # the Last Will, at once
    # Back online: the offline episode ends, the value alert is judged on values only.
    await feed(engine, pg_conn, at(50), fridge, readings=temps(fridge, [(50, 9.0)]))
    got = {a["rule_id"]: a for a in await alerts_of(pg_conn, device_id=fridge.device_id)}
    assert got["device.offline"]["state"] == "resolved"
    assert got["coldchain.heat"]["state"] == "firing"


async def test_whole_site_silent_raises_one_site_alert_and_holds_device_alerts_back(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    site = uid("site")
    a, b, c = (device(uid, "fridge", site=site) for _ in range(3))
    await register(pg_conn, site, a, b, c)
    # a is over its limit before the uplink fails: that alert stays visible.
    await feed(engine, pg_conn, at(40), a, readings=temps(a, [(m, 9.0) for m in range(0, 45, 5)]))
    await feed(engine, pg_conn, at(40.5), b, readings=temps(b, [(40.5, 5.0)]))
    await feed(engine, pg_conn, at(40.8), c, readings=temps(c, [(40.8, 5.0)]))

    # a is due at 43, b at 43.5, c at 43.8: at 43.2 a alone is due while b and c have
    # been quiet since: maybe the whole site -> held, no alert yet.
    await tick(engine, pg_conn, at(43.2))
    assert await alerts_of(pg_conn, rule_id="device.offline", subject=f"device:{a.device_id}") == []
    await tick(engine, pg_conn, at(44))
    [site_alert] = await alerts_of(pg_conn, subject=f"site:{site}")
    assert (site_alert["kind"], site_alert["state"], site_alert["site_id"]) == (
        "site",
        "firing",
        site,
    )
    assert site_alert["started_at"] == at(40.8)
    offline = [x for d in (a, b, c) for x in await alerts_of(pg_conn, device_id=d.device_id)
               if x["rule_id"] == "device.offline"]  # fmt: skip
    assert len(offline) == 3
    assert all(x["suppressed_by"] == site_alert["id"] for x in offline)
    [heat] = await alerts_of(pg_conn, device_id=a.device_id, rule_id="coldchain.heat")
    assert heat["state"] == "firing" and heat["suppressed_by"] is None
    await tick(engine, pg_conn, at(45))  # nothing new
    assert len(await alerts_of(pg_conn, subject=f"site:{site}")) == 1

    # b comes back: its offline alert resolves, the site alert resolves, a and c stand alone.
    await feed(engine, pg_conn, at(50), b, readings=temps(b, [(50, 5.0)]))
    [site_alert] = await alerts_of(pg_conn, subject=f"site:{site}")
    assert site_alert["state"] == "resolved"
    states = {x["device_id"]: (x["state"], x["suppressed_by"])
              for d in (a, b, c) for x in await alerts_of(pg_conn, device_id=d.device_id)
              if x["rule_id"] == "device.offline"}  # fmt: skip
    assert states == {
        a.device_id: ("firing", None),
        b.device_id: ("resolved", site_alert["id"]),
        c.device_id: ("firing", None),
    }
    released = await alerts_of(pg_conn, device_id=c.device_id, rule_id="device.offline")
    assert ("released", "firing") in await timeline(pg_conn, released[0]["id"])


async def test_one_device_silent_at_a_live_site_alerts_on_its_own(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    site = uid("site")
    a, b = device(uid, "fridge", site=site), device(uid, "fridge", site=site)
    await register(pg_conn, site, a, b)
    await feed(engine, pg_conn, at(0), a, b, readings=temps(a, [(0, 5)]) + temps(b, [(0, 5)]))
    for m in (1, 2, 3, 4):
        await feed(engine, pg_conn, at(m), b, readings=temps(b, [(m, 5)]))
    await tick(engine, pg_conn, at(4))
    [off] = await alerts_of(pg_conn, device_id=a.device_id)
    assert (off["rule_id"], off["kind"], off["suppressed_by"]) == (
        "device.offline",
        "offline",
        None,
    )
    assert off["started_at"] == at(0) and not off["retrospective"]
    assert await alerts_of(pg_conn, subject=f"site:{site}") == []


async def test_waste_bag_storage_overdue_via_tick(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    room = device(uid, "storage_room", domain="waste", interval_s=300)
    await register(pg_conn, uid("site"), room)
    bag = uid("B")
    stored = Event(at(0), room.device_id, "bag_stored", bag_id=bag, received_at=at(0))
    await feed(engine, pg_conn, at(0), room, events=[stored])
    await tick(engine, pg_conn, at(35 * 60))
    assert await alerts_of(pg_conn, subject=f"bag:{bag}") == []
    await tick(engine, pg_conn, at(36 * 60 + 0.1))
    [alert] = await alerts_of(pg_conn, subject=f"bag:{bag}")
    assert (alert["rule_id"], alert["severity"], alert["kind"]) == (
        "waste.storage_overdue", "warning", "event")  # fmt: skip
    assert alert["device_id"] == room.device_id and alert["started_at"] == at(36 * 60)
    await tick(engine, pg_conn, at(48 * 60 + 0.1))
    [alert] = await alerts_of(pg_conn, subject=f"bag:{bag}")
    assert alert["severity"] == "critical"
    collected = Event(at(49 * 60), room.device_id, "bag_collected", bag_id=bag,
                      attrs={"weight_kg": 2.0, "manifest_no": "M1", "collector": "x"})  # fmt: skip
    await feed(engine, pg_conn, at(49 * 60), room, events=[collected])
    [alert] = await alerts_of(pg_conn, subject=f"bag:{bag}")
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(49 * 60)
    kinds = [k for k, _ in await timeline(pg_conn, alert["id"])]
    assert kinds == ["fired", "escalated", "resolved"]


async def test_weight_mismatch_and_collected_unsealed(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    room = device(uid, "storage_room", domain="waste", interval_s=300)
    await register(pg_conn, uid("site"), room)
    b1, b2 = uid("B"), uid("B")
    evs = [
        Event(at(0), room.device_id, "bag_sealed", bag_id=b1, attrs={"weight_kg": 3.0}),
        Event(at(10), room.device_id, "bag_stored", bag_id=b1),
        Event(at(60), room.device_id, "bag_collected", bag_id=b1, attrs={"weight_kg": 2.5}),
        Event(at(60), room.device_id, "bag_collected", bag_id=b2, attrs={"weight_kg": 1.0}),
    ]
    await feed(engine, pg_conn, at(60), room, events=evs)
    [w] = await alerts_of(pg_conn, subject=f"bag:{b1}")
    assert (w["rule_id"], w["value"], w["threshold"]) == ("waste.weight_mismatch", -0.5, 0.2)
    await tick(engine, pg_conn, at(71))
    [u] = await alerts_of(pg_conn, subject=f"bag:{b2}")
    assert u["rule_id"] == "waste.collected_unsealed" and u["started_at"] == at(60)


async def test_acknowledge_requires_a_note_and_manual_resolve_follows_the_rule(
    pg_dsn: str, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    room = device(uid, "storage_room", domain="waste", interval_s=300)
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), room, fridge)
    bag = uid("B")
    async with AlertEngine(pg_dsn, background=False) as eng:  # rules from the table
        await feed(eng, pg_conn, at(60), room, events=[
            Event(at(0), room.device_id, "bag_sealed", bag_id=bag, attrs={"weight_kg": 3.0}),
            Event(at(60), room.device_id, "bag_collected", bag_id=bag, attrs={"weight_kg": 5}),
        ])  # fmt: skip
        await feed(eng, pg_conn, at(40), fridge,
                   readings=temps(fridge, [(m, 9.0) for m in range(0, 45, 5)]))  # fmt: skip
    [w] = await alerts_of(pg_conn, subject=f"bag:{bag}")
    [heat] = await alerts_of(pg_conn, device_id=fridge.device_id)
    for note in ("", "   "):
        with pytest.raises(NoteRequired):
            await acknowledge(pg_conn, heat["id"], "duty-li", note, at(50))
    async with pg_conn.transaction():
        done = await acknowledge(pg_conn, heat["id"], "duty-li", "door left open, closed", at(50))
    assert isinstance(done, dict)
    assert done["state"] == "acknowledged" and done["acknowledged_by"] == "duty-li"
    assert done["acknowledged_at"] == at(50).isoformat()
    assert await acknowledge(pg_conn, heat["id"], "duty-li", "again", at(51)) is False
    cur = await pg_conn.execute(
        "SELECT kind, state, actor, note FROM alert_events WHERE alert_id = %s ORDER BY id",
        (heat["id"],),
    )
    assert (await cur.fetchall())[-1] == (
        "acknowledged", "acknowledged", "duty-li", "door left open, closed")  # fmt: skip
    with pytest.raises(ManualResolveNotAllowed):
        await resolve_manually(pg_conn, heat["id"], "duty-li", "fixed", at(52))
    with pytest.raises(NoteRequired):
        await resolve_manually(pg_conn, w["id"], "duty-li", "", at(52))
    done = await resolve_manually(pg_conn, w["id"], "duty-li", "re-weighed: scale error", at(52))
    assert isinstance(done, dict) and done["state"] == "resolved"
    assert done["resolved_at"] == at(60).isoformat()  # never before the episode started


async def test_alert_events_are_announced_at_commit(
    engine: AlertEngine, pg_dsn: str, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    await register(pg_conn, uid("site"), fridge)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as listener:
        await listener.execute("LISTEN healthmon_alert_events")
        await feed(engine, pg_conn, at(40), fridge,
                   readings=temps(fridge, [(m, 9.0) for m in range(0, 45, 5)]))  # fmt: skip
        got = [n.payload async for n in listener.notifies(timeout=2.0, stop_after=1)]
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    cur = await pg_conn.execute("SELECT id FROM alert_events WHERE alert_id = %s", (alert["id"],))
    assert got == [str((await cur.fetchone() or [None])[0])]


async def test_engine_seeds_defaults_and_reloads_rules_on_notify(
    pg_dsn: str, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    async with AlertEngine(pg_dsn, tick_interval_s=3600, listen_poll_s=0.1) as eng:
        ids = {r.rule_id for r in eng.rules}
        assert {"coldchain.heat", "device.offline", "waste.storage_overdue"} <= ids
        rid = "test." + uid("rule").replace("-", "_")
        body = json.dumps({"kind": "threshold", "rule_id": rid, "metric": "temp_c",
                           "op": "above", "high": 30, "standard": "test"})  # fmt: skip
        async with pg_conn.transaction():
            await pg_conn.execute(
                "INSERT INTO rules (rule_id, body) VALUES (%s, %s::jsonb)", (rid, body)
            )
            await pg_conn.execute("NOTIFY healthmon_rules")
        for _ in range(50):
            if rid in {r.rule_id for r in eng.rules}:
                break
            await asyncio.sleep(0.1)
        assert rid in {r.rule_id for r in eng.rules}
        await pg_conn.execute("DELETE FROM rules WHERE rule_id = %s", (rid,))
        await pg_conn.execute("NOTIFY healthmon_rules")


async def store_readings(conn: Conn, readings: list[Reading]) -> None:
    """What the writer does before calling on_batch."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO readings (ts, device_id, metric, value, received_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(r.ts, r.device_id, r.metric, r.value, r.received_at or r.ts) for r in readings],
        )


async def test_backlog_arriving_after_live_data_is_replayed_from_history(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge", interval_s=300)
    await register(pg_conn, uid("site"), fridge)
    # Live data resumes at 3 h, before the logger's backlog of 0-3 h is uploaded.
    live = temps(fridge, [(180, 5.0)])
    await store_readings(pg_conn, live)
    await feed(engine, pg_conn, at(180), fridge, readings=live)
    points = [(m, 5.0) for m in range(0, 30, 5)] + [(m, 9.5) for m in range(30, 90, 5)]
    points += [(m, 5.0) for m in range(90, 180, 5)]
    backlog = temps(fridge, points, received=at(185))
    await store_readings(pg_conn, backlog)
    await feed(engine, pg_conn, at(185), fridge, readings=backlog)
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert (alert["rule_id"], alert["state"], alert["retrospective"]) == (
        "coldchain.heat", "resolved", True)  # fmt: skip
    assert (alert["started_at"], alert["resolved_at"]) == (at(30), at(90))
    assert alert["detected_at"] == at(185)
    assert await timeline(pg_conn, alert["id"]) == [("fired", "firing"), ("resolved", "resolved")]
    # The same backlog again (another worker's replay): nothing new.
    await feed(engine, pg_conn, at(186), fridge, readings=backlog)
    assert len(await alerts_of(pg_conn, device_id=fridge.device_id)) == 1


def test_rules_load_defaults_command_upserts_the_packs(pg_dsn: str) -> None:
    import argparse

    from alerts import cli
    from healthmon.settings import Settings

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["rules", "load-defaults"])
    settings = Settings(database_url=pg_dsn)
    assert args.func(args, settings) == 0
    assert args.func(args, settings) == 0  # again: nothing changes
    with psycopg.connect(pg_dsn) as conn:
        rows = dict(conn.execute("SELECT rule_id, body->>'standard' FROM rules").fetchall())
    for rid in ("coldchain.heat", "water.free_chlorine_low", "air.co2_high",
                "wastewater.cod_high", "waste.storage_overdue", "device.stuck"):  # fmt: skip
        assert rows[rid], rid


async def test_region_comes_from_the_site_when_the_writer_does_not_know_it(
    engine: AlertEngine, pg_conn: Conn, uid: Callable[[str], str]
) -> None:
    fridge = device(uid, "fridge")
    site = uid("site")
    await register(pg_conn, site, fridge)
    bare = DeviceInfo(fridge.device_id, "coldchain", site, None, "fridge", 60)
    await feed(engine, pg_conn, at(40), bare,
               readings=temps(fridge, [(m, 9.0) for m in range(0, 45, 5)]))  # fmt: skip
    [alert] = await alerts_of(pg_conn, device_id=fridge.device_id)
    assert (alert["site_id"], alert["region"], alert["domain"]) == (site, "r-test", "coldchain")
