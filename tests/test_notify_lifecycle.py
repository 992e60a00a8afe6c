"""The notifier around the alert lifecycle: severity raised, alerts held back under a
site alert, a restart in the middle of a send, and a database without notification
configuration."""

from __future__ import annotations

from typing import Any

import psycopg

from tests import test_notify_harness as harness
from tests.test_notify_harness import (
    HttpReceiver,
    at,
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


async def test_severity_raised_tells_those_already_notified_and_new_routes(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    cfg = webhook_config(http_receiver)
    cfg["channels"].append({"id": "cdc", "type": "webhook", "url": http_receiver.url("/cdc")})
    cfg["contact_groups"].append({"id": "cdc", "channels": ["cdc"]})
    cfg["routes"] = [
        {"id": "critical", "match": {"severity": "critical"}, "continue": True,
         "ladder": [{"groups": ["cdc"]}], "group_wait_s": 0},
        {"id": "all", "ladder": [{"tier": "duty"}], "group_wait_s": 0},
    ]  # fmt: skip
    await load(nconn, cfg)
    aid = await raise_alert(nconn, severity="warning")
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        assert [r.path for r in http_receiver.requests] == ["/hook"]
        await nconn.execute("UPDATE alerts SET severity = 'critical' WHERE id = %s", (aid,))
        await nconn.execute(
            "INSERT INTO alert_events (alert_id, at, kind, state, actor) VALUES (%s, %s,"
            " 'escalated', 'firing', 'engine')",
            (aid, at(60)),
        )
        await n.run_once(at(60))
    got = sorted((r.path, r.body["notification"]["purpose"]) for r in http_receiver.requests)
    assert got == [("/cdc", "fired"), ("/hook", "fired"), ("/hook", "severity_raised")]
    assert http_receiver.at("/cdc")[0].body["severity"] == "critical"
    [raised] = [
        r for r in http_receiver.requests if r.body["notification"]["purpose"] == "severity_raised"
    ]
    assert "告警升级" in raised.body["notification"]["title"]
    assert (await timeline(nconn, aid)).count("notified") == 3


async def test_alert_held_back_under_a_site_alert_is_not_notified(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver))
    site = await raise_alert(nconn, rule_id="site.silent", device_id=None, kind="site")
    held = await raise_alert(nconn, rule_id="device.offline", kind="offline")
    await nconn.execute("UPDATE alerts SET suppressed_by = %s WHERE id = %s", (site, held))
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await n.run_once(at(600))
    assert [r.body["id"] for r in http_receiver.requests] == [str(site)]
    assert await timeline(nconn, held) == ["fired"]


async def test_a_send_cut_short_by_a_restart_is_sent_again(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver, max_attempts=3))
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
    # As if the process died after marking the row `sent` but before the answer came.
    await nconn.execute("UPDATE notifications SET state = 'sent' WHERE %s = ANY(alert_ids)", (aid,))
    async with notifier(ndsn) as n:
        [led] = await rows(nconn, "SELECT * FROM notifications WHERE %s = ANY(alert_ids)", aid)
        assert (led["state"], led["last_error"]) == ("queued", "outcome lost (restart)")
        await n.run_once(at(10))
    [led] = await rows(nconn, "SELECT * FROM notifications WHERE %s = ANY(alert_ids)", aid)
    assert (led["state"], led["attempts"]) == ("accepted", 2)
    assert len(http_receiver.requests) == 2  # at least once


async def test_without_configuration_nothing_is_sent_and_no_system_alert(
    ndsn: str, nconn: Conn
) -> None:
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
    assert (r.events, r.queued, r.system_alerts) == (1, 0, 0)
    assert not await rows(nconn, "SELECT 1 FROM alerts WHERE kind = 'system'")
    assert await timeline(nconn, aid) == ["fired"]


async def test_config_reload_is_picked_up_by_a_running_notifier(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(nconn, webhook_config(http_receiver))
    async with notifier(ndsn) as n:
        await raise_alert(nconn, device_id="fridge-1")
        await n.run_once(at(0))
        cfg = webhook_config(http_receiver)
        cfg["channels"][0]["url"] = http_receiver.url("/new-hook")
        await load(nconn, cfg)
        await raise_alert(nconn, device_id="fridge-2")
        await n.run_once(at(10))
    assert [r.path for r in http_receiver.requests] == ["/hook", "/new-hook"]


async def test_a_retrospective_episode_already_resolved_is_reported_once(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    """A backlog uploaded late raises an alert that is over by the time it is recorded:
    the duty staff are still told, once, that it happened; no ladder, no reminders."""
    await load(nconn, webhook_config(http_receiver))
    aid = await raise_alert(nconn)
    await nconn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = started_at + interval '2 hours',"
        " retrospective = true WHERE id = %s",
        (aid,),
    )
    async with notifier(ndsn) as n:
        await n.run_once(at(0))
        await n.run_once(at(3600))
        await n.run_once(at(7200))
    purposes = [r.body["notification"]["purpose"] for r in http_receiver.requests]
    assert purposes == ["fired_resolved"]
    assert "补报" in http_receiver.requests[0].body["notification"]["title"]
    assert http_receiver.requests[0].body["state"] == "resolved"
