"""The notifier against a real database and local receivers: retries, fallback, system
alerts, escalation, reminders, silences, grouping, the outbox cursor."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import psycopg

from tests import test_notify_harness as harness
from tests.test_notify_harness import (
    HttpReceiver,
    at,
    change_state,
    load,
    notifier,
    raise_alert,
    rows,
    timeline,
    webhook_config,
)

Conn = psycopg.AsyncConnection[Any]

# Fixtures shared with the other notify test modules.
http_receiver = harness.http_receiver
nconn = harness.nconn
ndsn = harness.ndsn
notify_template = harness.notify_template


async def test_webhook_retries_until_the_receiver_accepts(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", (500, "boom"), (500, "boom"))
    await load(nconn, webhook_config(http_receiver, max_attempts=5))
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
        assert (r.attempts, r.accepted, r.retries) == (1, 0, 1)
        [led] = await rows(nconn, "SELECT * FROM notifications WHERE %s = ANY(alert_ids)", aid)
        assert (led["state"], led["attempts"]) == ("queued", 1)
        assert led["next_attempt_at"] == at(1)  # backoff 1 s, then 2 s
        assert (await n.run_once(at(0.5))).attempts == 0  # not due yet
        assert (await n.run_once(at(1))).attempts == 1
        assert (await n.run_once(at(2.9))).attempts == 0
        r = await n.run_once(at(3))
        assert (r.attempts, r.accepted) == (1, 1)
    [led] = await rows(nconn, "SELECT * FROM notifications WHERE %s = ANY(alert_ids)", aid)
    assert (led["state"], led["attempts"]) == ("accepted", 3)
    log = await rows(
        nconn,
        "SELECT attempt, ok, status_code, at FROM notification_attempts"
        " WHERE notification_id = %s ORDER BY attempt",
        led["id"],
    )
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in log] == [
        (1, False, 500),
        (2, False, 500),
        (3, True, 200),
    ]
    assert [a["at"] for a in log] == [at(0), at(1), at(3)]
    assert len(http_receiver.at("/hook")) == 3
    assert (await timeline(nconn, aid)).count("notified") == 1
    assert n.stats.attempt_failures == 2 and n.stats.failures_by_channel == {"hook": 2}


async def test_fallback_channel_used_and_channel_failing_alert_raised(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/down", *[(503, "down")] * 10)
    cfg = webhook_config(http_receiver, max_attempts=2, channel_failing_after=2)
    cfg["channels"] = [
        {
            "id": "primary",
            "type": "webhook",
            "url": http_receiver.url("/down"),
            "fallback": "backup",
        },
        {"id": "backup", "type": "webhook", "url": http_receiver.url("/backup")},
    ]
    cfg["contact_groups"][0]["channels"] = ["primary"]
    await load(nconn, cfg)
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
        assert (r.attempts, r.accepted, r.fallbacks) == (1, 0, 0)
        r = await n.run_once(at(1))  # second failure: primary gives up, backup goes at once
        assert (r.attempts, r.accepted, r.fallbacks, r.failed) == (2, 1, 1, 1)
    led = await rows(
        nconn,
        "SELECT channel_id, state, attempts, fallback_of FROM notifications"
        " WHERE %s = ANY(alert_ids) ORDER BY id",
        aid,
    )
    assert [(x["channel_id"], x["state"], x["attempts"]) for x in led] == [
        ("primary", "failed", 2),
        ("backup", "accepted", 1),
    ]
    assert led[1]["fallback_of"] is not None
    assert len(http_receiver.at("/backup")) == 1
    assert http_receiver.at("/backup")[0].body["id"] == str(aid)
    assert (await timeline(nconn, aid))[-2:] == ["notify_failed", "notified"]
    [sysalert] = await rows(nconn, "SELECT * FROM alerts WHERE rule_id = 'system.channel_failing'")
    assert (sysalert["subject"], sysalert["kind"], sysalert["state"]) == (
        "channel:primary",
        "system",
        "firing",
    )
    assert await timeline(nconn, sysalert["id"]) == ["fired"]
    # No `nobody reachable`: the backup reached someone.
    assert not await rows(nconn, "SELECT 1 FROM alerts WHERE rule_id = 'system.nobody_reachable'")


async def test_channel_failing_alert_resolves_when_the_channel_recovers(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", (500, "x"), (500, "x"))
    await load(nconn, webhook_config(http_receiver, max_attempts=5, channel_failing_after=2))
    await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await n.run_once(at(1))
        [s] = await rows(nconn, "SELECT state FROM alerts WHERE rule_id = 'system.channel_failing'")
        assert s["state"] == "firing"
        await n.run_once(at(3))
    [s] = await rows(nconn, "SELECT * FROM alerts WHERE rule_id = 'system.channel_failing'")
    assert (s["state"], s["resolved_by"]) == ("resolved", "notifier")


async def test_nobody_reachable_alert_when_every_channel_fails(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", (404, "no such hook"))  # 404: not retried
    await load(nconn, webhook_config(http_receiver, max_attempts=3))
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
    assert (r.attempts, r.failed, r.system_alerts) == (1, 1, 1)
    [s] = await rows(nconn, "SELECT * FROM alerts WHERE rule_id = 'system.nobody_reachable'")
    assert (s["subject"], s["site_id"], s["severity"]) == (f"alert:{aid}", "site-1", "critical")


async def test_nobody_reachable_alert_when_no_route_matches(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    cfg = webhook_config(http_receiver)
    cfg["routes"][0]["match"] = {"region": "4403*"}
    await load(nconn, cfg)
    aid = await raise_alert(nconn, region="310115")
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await n.run_once(at(1))
    [s] = await rows(nconn, "SELECT * FROM alerts WHERE rule_id = 'system.nobody_reachable'")
    assert s["subject"] == f"alert:{aid}"
    assert not http_receiver.requests  # the system alert itself matches no route either


def ladder_config(rec: HttpReceiver, site: str, **route: Any) -> dict[str, Any]:
    """Facility duty staff -> facility head (after 10 min) -> district office (after 30 min)."""
    return {
        "channels": [
            {"id": "duty-robot", "type": "wecom", "url": rec.url("/duty")},
            {"id": "head-robot", "type": "dingtalk", "url": rec.url("/head")},
            {"id": "district-hook", "type": "webhook", "url": rec.url("/district")},
        ],
        "contact_groups": [
            {"id": "duty", "tier": "duty", "match": {"site_id": site}, "channels": ["duty-robot"]},
            {
                "id": "other-duty",
                "tier": "duty",
                "match": {"site_id": "elsewhere"},
                "channels": ["head-robot"],
            },
            {"id": "head", "tier": "head", "match": {"site_id": site}, "channels": ["head-robot"]},
            {
                "id": "district",
                "tier": "district",
                "match": {"region": "310115"},
                "channels": ["district-hook"],
            },
        ],
        "routes": [
            {
                "id": "coldchain",
                "match": {"domain": "coldchain", "min_severity": "warning"},
                "ladder": [
                    {"tier": "duty"},
                    {"tier": "head", "after_s": 600},
                    {"tier": "district", "after_s": 1800},
                ],
                "group_wait_s": 0,
                **route,
            }
        ],
    }


async def test_escalation_follows_the_ladder_when_nobody_acknowledges(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, ladder_config(http_receiver, "site-1"))
    aid = await raise_alert(nconn)

    def paths() -> list[str]:
        return [r.path for r in http_receiver.requests]

    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        assert paths() == ["/duty"]
        await n.run_once(at(599))
        assert paths() == ["/duty"]
        r = await n.run_once(at(600))
        assert r.escalations == 1 and paths() == ["/duty", "/head"]
        assert "逐级上报" in http_receiver.at("/head")[0].body["markdown"]["title"]
        await n.run_once(at(1799))
        assert paths() == ["/duty", "/head"]
        await n.run_once(at(1800))
        assert paths() == ["/duty", "/head", "/district"]
        await n.run_once(at(7200))  # the ladder has no fourth rung
        assert len(paths()) == 3
        await change_state(nconn, aid, "acknowledged", at(7300))
        await n.run_once(at(7300))
        # the acknowledgement goes to everyone told so far, once
        assert sorted(paths()[3:]) == ["/district", "/duty", "/head"]
        await n.run_once(at(99999))
        assert len(paths()) == 6
    kinds = await timeline(nconn, aid)
    assert kinds.count("escalated_notify") == 2 and kinds.count("notified") == 4
    ack = http_receiver.at("/district")[-1].body
    assert ack["state"] == "acknowledged" and ack["notification"]["purpose"] == "acknowledged"


async def test_acknowledgement_stops_the_ladder(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, ladder_config(http_receiver, "site-1"))
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await change_state(nconn, aid, "acknowledged", at(300))
        await n.run_once(at(300))
        await n.run_once(at(5000))
    assert [r.path for r in http_receiver.requests] == ["/duty", "/duty"]


async def test_reminders_while_unacknowledged(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    cfg = ladder_config(http_receiver, "site-1", reminder_every_s=120, max_reminders=2)
    cfg["routes"][0]["ladder"] = [{"tier": "duty"}]
    await load(nconn, cfg)
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        assert (await n.run_once(at(119))).reminders == 0
        assert (await n.run_once(at(120))).reminders == 1
        assert (await n.run_once(at(200))).reminders == 0
        assert (await n.run_once(at(240))).reminders == 1
        assert (await n.run_once(at(10000))).reminders == 0  # max_reminders reached
    bodies = [r.body for r in http_receiver.at("/duty")]
    assert len(bodies) == 3
    assert "提醒" in bodies[1]["markdown"]["content"]
    assert (await timeline(nconn, aid)).count("reminded") == 2


async def test_nothing_sent_during_a_silence_but_recorded(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, ladder_config(http_receiver, "site-1", reminder_every_s=60))
    cur = await nconn.execute(
        "INSERT INTO silences (matchers, starts_at, ends_at, owner, reason)"
        " VALUES ('{\"site_id\": \"site-1\"}', %s, %s, 'zhang.san', '冰箱除霜维护') RETURNING id",
        (at(-60), at(3600)),
    )
    sid = (await cur.fetchone())["id"]  # type: ignore[index]
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
        assert r.silenced == 1
        for t in (60, 600, 1800, 3599):
            await n.run_once(at(t))
        assert not http_receiver.requests  # muted: no notification, no reminder, no escalation
        [state] = await rows(nconn, "SELECT state FROM alerts WHERE id = %s", aid)
        assert state["state"] == "firing"
        [led] = await rows(nconn, "SELECT * FROM notifications WHERE %s = ANY(alert_ids)", aid)
        assert (led["state"], led["silence_id"], led["channel_id"]) == ("silenced", sid, None)
        tl = await rows(
            nconn, "SELECT kind, data FROM alert_events WHERE alert_id = %s ORDER BY id", aid
        )
        assert [x["kind"] for x in tl] == ["fired", "silenced"]
        assert tl[1]["data"]["silence_id"] == str(sid)
        assert tl[1]["data"]["owner"] == "zhang.san"
        # The silence expires with the alert still firing: now the duty staff are told.
        before = len(http_receiver.requests)
        await n.run_once(at(3600))
        sent = http_receiver.requests[before:]
        assert [x.path for x in sent] == ["/duty"]
        assert "fridge-1" in sent[0].body["markdown"]["content"]


async def test_alerts_of_one_site_and_hazard_are_grouped_into_one_message(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    cfg = webhook_config(http_receiver)
    cfg["routes"][0]["group_wait_s"] = 30
    await load(nconn, cfg)
    a1 = await raise_alert(nconn, device_id="fridge-1", when=at(0))
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        a2 = await raise_alert(nconn, device_id="fridge-2", when=at(5))
        a3 = await raise_alert(nconn, device_id="fridge-3", rule_id="coldchain.freeze", when=at(6))
        await n.run_once(at(6))
        assert not http_receiver.requests  # still waiting for companions
        await n.run_once(at(30))
        assert len(http_receiver.requests) == 1  # a1 + a2; a3's window ends at 36
        await n.run_once(at(36))
    first, second = (r.body for r in http_receiver.requests)
    assert {a["id"] for a in first["alerts"]} == {str(a1), str(a2)}
    assert first["id"] == str(a1)
    assert [a["id"] for a in second["alerts"]] == [str(a3)]
    [led] = await rows(nconn, "SELECT alert_ids FROM notifications WHERE %s = ANY(alert_ids)", a2)
    assert set(led["alert_ids"]) == {a1, a2}


async def test_restart_neither_loses_nor_repeats(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver))
    a1 = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
    a2 = await raise_alert(nconn, device_id="fridge-2")  # while the notifier is down
    async with notifier(ndsn) as n:
        await n.run_once(at(10))
        await n.run_once(at(20))
    assert [r.body["id"] for r in http_receiver.requests] == [str(a1), str(a2)]


async def test_uncommitted_alert_is_not_notified_and_a_late_commit_is_not_lost(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver))
    async with await psycopg.AsyncConnection.connect(ndsn) as slow, notifier(ndsn) as n:
        # `slow` takes the lower event id but commits after a later alert.
        await slow.execute(
            "INSERT INTO alerts (id, rule_id, subject, device_id, site_id, domain, severity, state,"
            " started_at, detected_at) VALUES (gen_random_uuid(), 'coldchain.heat', 'device:s',"
            " 'fridge-s', 'site-1', 'coldchain', 'critical', 'firing', %s, %s)",
            (at(0), at(0)),
        )
        await slow.execute(
            "INSERT INTO alert_events (alert_id, at, kind, state)"
            " SELECT id, %s, 'fired', 'firing' FROM alerts WHERE subject = 'device:s'",
            (at(0),),
        )
        fast = await raise_alert(nconn, device_id="fridge-f")
        await n.run_once(at(0))
        assert [r.body["id"] for r in http_receiver.requests] == [str(fast)]
        await slow.commit()
        await n.run_once(at(1))
    ids = [r.body["device_id"] for r in http_receiver.requests]
    assert ids == ["fridge-f", "fridge-s"]


async def test_resolved_alert_notice_and_no_more_reminders(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    cfg = webhook_config(http_receiver)
    cfg["routes"][0]["reminder_every_s"] = 60
    await load(nconn, cfg)
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await change_state(nconn, aid, "resolved", at(30))
        await n.run_once(at(30))
        await n.run_once(at(600))
    bodies = [r.body for r in http_receiver.requests]
    assert [b["notification"]["purpose"] for b in bodies] == ["fired", "resolved"]
    assert bodies[1]["state"] == "resolved"


async def test_run_loop_is_woken_by_notify(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver))
    async with notifier(ndsn, poll_interval_s=30.0) as n:
        task = asyncio.create_task(n.run(), name="test.notifier")
        try:
            await asyncio.sleep(0.3)
            aid = await raise_alert(nconn, when=datetime.now(UTC))
            for _ in range(100):
                if http_receiver.requests:
                    break
                await asyncio.sleep(0.05)
            assert [r.body["id"] for r in http_receiver.requests] == [str(aid)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
