"""Every channel's payload as its receiver sees it: webhook JSON, DingTalk (signed) and
WeCom robots, e-mail over a local SMTP server, the contract's MQTT alert topic; and
`healthmon notify load FILE`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from alerts.notify import load_config
from alerts.notify.cli import register
from healthmon.settings import Settings
from tests import test_notify_harness as harness
from tests.test_notify_harness import (
    HttpReceiver,
    Mailbox,
    at,
    load,
    notifier,
    raise_alert,
    rows,
)

Conn = psycopg.AsyncConnection[Any]

# Fixtures shared with the other notify test modules.
http_receiver = harness.http_receiver
nconn = harness.nconn
ndsn = harness.ndsn
notify_template = harness.notify_template
smtp_server = harness.smtp_server
CONTRACT_KEYS = {
    "id",
    "rule_id",
    "device_id",
    "site_id",
    "region",
    "domain",
    "metric",
    "severity",
    "state",
    "started_at",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_at",
    "value",
    "threshold",
    "message",
}
MEMBERS = [
    {"name": "张三", "role": "值班员", "phone": "13800000001", "email": "zhang@cdc.example"},
    {"name": "李四", "role": "值班员", "phone": "13800000002", "email": "li@cdc.example"},
]


def one_group(channels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "channels": channels,
        "contact_groups": [
            {
                "id": "duty",
                "tier": "duty",
                "members": MEMBERS,
                "channels": [c["id"] for c in channels],
            }
        ],
        "routes": [{"id": "all", "ladder": [{"tier": "duty"}], "group_wait_s": 0}],
    }


async def test_webhook_posts_the_contract_alert_object(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(
        nconn,
        one_group(
            [
                {
                    "id": "hook",
                    "type": "webhook",
                    "url": http_receiver.url("/h"),
                    "headers": {"Authorization": "Bearer t0k"},
                }
            ]
        ),
    )
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        assert (await n.run_once(at(0))).accepted == 1
    [req] = http_receiver.requests
    assert req.headers["Authorization"] == "Bearer t0k"
    assert req.headers["Content-Type"] == "application/json"
    body = req.body
    assert set(body) >= CONTRACT_KEYS
    assert (body["id"], body["rule_id"], body["state"], body["severity"]) == (
        str(aid),
        "coldchain.heat",
        "firing",
        "critical",
    )
    assert (body["value"], body["threshold"], body["acknowledged_at"]) == (9.4, 8.0, None)
    assert body["started_at"] == at(0).isoformat()
    assert body["notification"]["purpose"] == "fired"
    assert [a["id"] for a in body["alerts"]] == [str(aid)]


async def test_dingtalk_markdown_is_signed_and_mentions_members(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    secret = "SEC0123456789abcdef"
    await load(
        nconn,
        one_group(
            [
                {
                    "id": "dd",
                    "type": "dingtalk",
                    "url": http_receiver.url("/robot/send?access_token=abc"),
                    "secret": secret,
                    "at_members": True,
                }
            ]
        ),
    )
    await raise_alert(nconn)
    before_ms = int(time.time() * 1000)
    async with notifier(ndsn) as n:
        assert (await n.run_once(at(0))).accepted == 1
    [req] = http_receiver.requests
    assert req.query["access_token"] == ["abc"]
    ts = req.query["timestamp"][0]
    assert before_ms <= int(ts) <= int(time.time() * 1000)  # the real clock, not `now`
    expected = base64.b64encode(
        hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    ).decode()
    # parse_qs already URL-decoded the query once.
    assert req.query["sign"][0] == expected
    body = req.body
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"].startswith("【严重】告警")
    assert "fridge-1" in body["markdown"]["text"] and "限值 8" in body["markdown"]["text"]
    assert "@13800000001" in body["markdown"]["text"]
    assert body["at"] == {"atMobiles": ["13800000001", "13800000002"], "isAtAll": False}


async def test_dingtalk_errcode_is_a_failure_not_an_acceptance(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/dd", (200, {"errcode": 130101, "errmsg": "send too fast"}))
    await load(
        nconn,
        one_group(
            [{"id": "dd", "type": "dingtalk", "url": http_receiver.url("/dd"), "msgtype": "text"}]
        ),
    )
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        r = await n.run_once(at(0))
        assert (r.accepted, r.retries) == (0, 1)  # rate limit: retried
        assert (await n.run_once(at(1))).accepted == 1
    bodies = [x.body for x in http_receiver.requests]
    assert bodies[0]["msgtype"] == "text" and "fridge-1" in bodies[0]["text"]["content"]
    [a1, a2] = await rows(
        nconn,
        "SELECT a.ok, a.error FROM notification_attempts a JOIN notifications n"
        " ON n.id = a.notification_id WHERE %s = ANY(n.alert_ids) ORDER BY a.id",
        aid,
    )
    assert not a1["ok"] and "130101" in a1["error"] and a2["ok"]


async def test_wecom_markdown_and_text_formats(
    ndsn: str, nconn: Conn, http_receiver: HttpReceiver
) -> None:
    await load(
        nconn,
        one_group(
            [
                {"id": "wx-md", "type": "wecom", "url": http_receiver.url("/md?key=k1")},
                {
                    "id": "wx-text",
                    "type": "wecom",
                    "url": http_receiver.url("/text?key=k2"),
                    "msgtype": "text",
                    "at_members": True,
                },
            ]
        ),
    )
    await raise_alert(nconn)
    async with notifier(ndsn) as n:
        assert (await n.run_once(at(0))).accepted == 2
    md = http_receiver.at("/md")[0]
    assert md.query["key"] == ["k1"]
    assert md.body["msgtype"] == "markdown"
    assert md.body["markdown"]["content"].startswith("### 【严重】告警 疫苗冷链 site-1")
    text = http_receiver.at("/text")[0].body
    assert text["msgtype"] == "text"
    assert text["text"]["mentioned_mobile_list"] == ["13800000001", "13800000002"]
    assert "规则 coldchain.heat" in text["text"]["content"]


async def test_email_reaches_members_with_severity_and_site_in_the_subject(
    ndsn: str, nconn: Conn, smtp_server: Mailbox
) -> None:
    await load(
        nconn,
        one_group(
            [
                {
                    "id": "mail",
                    "type": "email",
                    "host": smtp_server.host,
                    "port": smtp_server.port,
                    "from": "healthmon@cdc.example",
                    "to": ["duty-desk@cdc.example"],
                }
            ]
        ),
    )
    aid = await raise_alert(nconn)
    async with notifier(ndsn) as n:
        assert (await n.run_once(at(0))).accepted == 1
    [(sender, rcpts, raw)] = smtp_server.mails
    assert sender == "healthmon@cdc.example"
    assert sorted(rcpts) == ["duty-desk@cdc.example", "li@cdc.example", "zhang@cdc.example"]
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["Subject"].startswith("[healthmon][严重 critical] site-1:")
    body = mail.get_content()
    assert "fridge-1" in body and "9.4" in body and "2026-11-23 12:00:00" in body  # CST
    assert mail.get_content_type() == "text/plain"
    [led] = await rows(nconn, "SELECT state FROM notifications WHERE %s = ANY(alert_ids)", aid)
    assert led["state"] == "accepted"


async def test_mqtt_alert_topic_carries_every_state_change(
    ndsn: str, nconn: Conn, mqtt_broker: tuple[str, int]
) -> None:
    host, port = mqtt_broker
    device = f"fridge-{uuid.uuid4().hex[:8]}"
    got: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{device}")
    subscribed = asyncio.Event()

    def on_message(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(got.put_nowait, (m.topic, m.qos, json.loads(m.payload)))

    def on_subscribe(*_a: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    sub.on_message = on_message
    sub.on_subscribe = on_subscribe
    sub.on_connect = lambda c, *_a: c.subscribe(f"hm/alerts/v1/+/{device}", qos=1)
    sub.connect(host, port)
    sub.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await load(
            nconn,
            {
                "channels": [{"id": "bus", "type": "mqtt", "host": host, "port": port}],
                "delivery": {"broadcast": ["bus"]},
            },
        )
        aid = await raise_alert(nconn, device_id=device)
        async with notifier(ndsn) as n:
            r = await n.run_once(at(0))
            assert r.accepted == 1
            topic, qos, payload = await asyncio.wait_for(got.get(), 5)
            assert (topic, qos) == (f"hm/alerts/v1/coldchain/{device}", 1)
            assert set(payload) >= CONTRACT_KEYS  # optional extra fields allowed
            assert (payload["id"], payload["state"]) == (str(aid), "firing")
            await nconn.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = %s WHERE id = %s", (at(5), aid)
            )
            await nconn.execute(
                "INSERT INTO alert_events (alert_id, at, kind, state) VALUES (%s, %s,"
                " 'resolved', 'resolved')",
                (aid, at(5)),
            )
            await n.run_once(at(5))
            _, _, payload = await asyncio.wait_for(got.get(), 5)
            assert payload["state"] == "resolved" and payload["resolved_at"] == at(5).isoformat()
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_notify_load_command_stores_a_yaml_file(ndsn: str, tmp_path: Path) -> None:
    f = tmp_path / "notify.yaml"
    f.write_text(
        """
channels:
  - {id: cdc-dd, type: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=x",
     secret: SECabc, fallback: cdc-mail}
  - {id: cdc-mail, type: email, host: smtp.cdc.example, port: 25, from: healthmon@cdc.example}
contact_groups:
  - id: clinic-a-duty
    name: 甲社区卫生服务中心 值班
    tier: duty
    match: {site_id: clinic-a}
    channels: [cdc-dd]
    members: [{name: 张三, phone: "13800000001", email: zhang@cdc.example}]
  - {id: district-office, tier: district, match: {region: "310115*"}, channels: [cdc-mail]}
routes:
  - id: critical-coldchain
    match: {domain: coldchain, min_severity: warning}
    ladder:
      - {tier: duty}
      - {tier: district, after_s: 1800}
    reminder_every_s: 600
    group_wait_s: 20
delivery: {max_attempts: 4, channel_failing_after: 5}
""",
        encoding="utf-8",
    )
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    settings = Settings(database_url=ndsn)
    args = parser.parse_args(["notify", "load", str(f)])
    assert args.func(args, settings) == 0

    async def stored() -> Any:
        async with await psycopg.AsyncConnection.connect(ndsn) as conn:
            return await load_config(conn)

    version, cfg = asyncio.run(stored())
    assert version is not None
    assert [c.id for c in cfg.channels] == ["cdc-dd", "cdc-mail"]
    dd, duty = cfg.channel("cdc-dd"), cfg.group("clinic-a-duty")
    assert dd is not None and duty is not None
    assert (dd.secret, dd.fallback) == ("SECabc", "cdc-mail")
    assert duty.members[0].name == "张三"
    route = cfg.routes[0]
    assert (route.reminder_every_s, route.group_wait_s, route.ladder[1].after_s) == (600, 20, 1800)
    assert cfg.delivery.max_attempts == 4

    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{id: r, ladder: [{groups: [nobody]}]}]\n", encoding="utf-8")
    args = parser.parse_args(["notify", "load", str(bad)])
    assert args.func(args, settings) == 2
