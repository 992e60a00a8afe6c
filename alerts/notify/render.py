"""Pure rendering: the contract's alert object, human messages (Chinese, with the
severity and site up front), and each channel type's request body.

Robot formats as the vendors document them:
DingTalk custom robot https://open.dingtalk.com/document/robots/custom-robot-access
(msgtype text/markdown, `at.atMobiles`; signing: HMAC-SHA256 over "timestamp\\nsecret",
base64, URL-encoded, sent as `timestamp` and `sign` query parameters);
WeCom group robot https://developer.work.weixin.qq.com/document/path/91770
(msgtype text/markdown; markdown content at most 4096 bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote_plus

# The engine's row -> contract dict (contract section 5 plus optional extra fields).

# People read China Standard Time; the stored times stay UTC.
CST = timezone(timedelta(hours=8), "CST")
SEVERITY_ZH = {"critical": "严重", "warning": "警告", "info": "提示"}
PURPOSE_ZH = {
    "fired": "告警",
    "reminder": "提醒：告警仍未确认",
    "escalation": "逐级上报：告警无人确认",
    "severity_raised": "告警升级",
    "acknowledged": "告警已确认",
    "resolved": "告警已恢复",
    "fired_resolved": "补报：告警（已恢复）",
    "state": "告警状态",
}
DOMAIN_ZH = {
    "coldchain": "疫苗冷链",
    "air": "公共场所空气",
    "water": "生活饮用水",
    "pool": "游泳池水",
    "wastewater": "医院污水",
    "waste": "医疗废物",
}
WECOM_MARKDOWN_MAX_BYTES = 4096
DINGTALK_TEXT_MAX_CHARS = 5000  # conservative: long messages are rejected by the robot
MAX_LISTED_ALERTS = 20


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered notification: what every channel sends, in its own format."""

    purpose: str
    level: int
    title: str
    text: str
    markdown: str
    alerts: tuple[dict[str, Any], ...]
    mobiles: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "level": self.level,
            "title": self.title,
            "text": self.text,
            "markdown": self.markdown,
            "alerts": list(self.alerts),
            "mobiles": list(self.mobiles),
            "emails": list(self.emails),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Message:
        return cls(
            purpose=d["purpose"],
            level=int(d["level"]),
            title=d["title"],
            text=d["text"],
            markdown=d["markdown"],
            alerts=tuple(d["alerts"]),
            mobiles=tuple(d.get("mobiles", ())),
            emails=tuple(d.get("emails", ())),
        )


def _local(ts: str | None) -> str:
    if not ts:
        return "-"
    return datetime.fromisoformat(ts).astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: object) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _alert_lines(a: Mapping[str, Any]) -> list[str]:
    where = " / ".join(str(x) for x in (a.get("region"), a.get("site_id"), a.get("device_id")) if x)
    lines = [f"对象 {where or '-'}", f"规则 {a.get('rule_id')}"]
    if a.get("metric"):
        lines.append(
            f"指标 {a['metric']} = {_num(a.get('value'))}（限值 {_num(a.get('threshold'))}）"
        )
    lines.append(f"开始 {_local(a.get('started_at'))}")
    if a.get("message"):
        lines.append(str(a["message"]))
    return lines


def render_message(
    *,
    purpose: str,
    level: int,
    alerts: Sequence[Mapping[str, Any]],
    mobiles: Sequence[str] = (),
    emails: Sequence[str] = (),
    tier: str | None = None,
) -> Message:
    """The message for one batch (one site and hazard, one or more alerts)."""
    first = alerts[0]
    sev = str(first.get("severity") or "info")
    domain = DOMAIN_ZH.get(str(first.get("domain")), str(first.get("domain") or "系统"))
    place = first.get("site_id") or first.get("device_id") or "-"
    count = f"（{len(alerts)} 条）" if len(alerts) > 1 else ""
    title = (
        f"【{SEVERITY_ZH.get(sev, sev)}】{PURPOSE_ZH.get(purpose, purpose)}{count} {domain} {place}"
    )
    head = [title]
    if purpose == "escalation":
        head.append(f"第 {level + 1} 级{f'（{tier}）' if tier else ''}：下级在规定时间内未确认")
    shown = alerts[:MAX_LISTED_ALERTS]
    text_parts = ["\n".join(head)]
    md_parts = [f"### {title}"] + ([f"> {head[1]}"] if len(head) > 1 else [])
    for a in shown:
        lines = _alert_lines(a)
        text_parts.append("\n".join(lines))
        md_parts.append("\n".join(f"- {ln}" for ln in lines))
    if len(alerts) > len(shown):
        more = f"另有 {len(alerts) - len(shown)} 条未列出"
        text_parts.append(more)
        md_parts.append(more)
    if mobiles:
        md_parts.append(" ".join(f"@{m}" for m in mobiles))
    return Message(
        purpose=purpose,
        level=level,
        title=title,
        text="\n\n".join(text_parts),
        markdown="\n\n".join(md_parts),
        alerts=tuple(dict(a) for a in alerts),
        mobiles=tuple(mobiles),
        emails=tuple(emails),
    )


def email_subject(msg: Message) -> str:
    """Severity and site first, so a mail client's list view says what matters."""
    first = msg.alerts[0]
    sev = str(first.get("severity") or "info")
    site = first.get("site_id") or first.get("device_id") or "-"
    return f"[healthmon][{SEVERITY_ZH.get(sev, sev)} {sev}] {site}: {msg.title}"


def webhook_body(msg: Message, notification_id: int) -> dict[str, Any]:
    """The alert object of the contract (the batch's first alert), extended with the
    optional `notification` and `alerts` (the whole batch) fields."""
    body = dict(msg.alerts[0])
    body["notification"] = {
        "id": notification_id,
        "purpose": msg.purpose,
        "level": msg.level,
        "title": msg.title,
    }
    body["alerts"] = list(msg.alerts)
    return body


def _truncate_bytes(s: str, limit: int) -> str:
    b = s.encode("utf-8")
    return s if len(b) <= limit else b[: limit - 3].decode("utf-8", "ignore") + "..."


def dingtalk_body(msg: Message, *, msgtype: str, at_members: bool) -> dict[str, Any]:
    at = {"atMobiles": list(msg.mobiles) if at_members else [], "isAtAll": False}
    if msgtype == "text":
        return {
            "msgtype": "text",
            "text": {"content": msg.text[:DINGTALK_TEXT_MAX_CHARS]},
            "at": at,
        }
    return {
        "msgtype": "markdown",
        "markdown": {"title": msg.title, "text": msg.markdown[:DINGTALK_TEXT_MAX_CHARS]},
        "at": at,
    }


def wecom_body(msg: Message, *, msgtype: str, at_members: bool) -> dict[str, Any]:
    if msgtype == "text":
        text: dict[str, Any] = {"content": _truncate_bytes(msg.text, 2048)}
        if at_members and msg.mobiles:
            text["mentioned_mobile_list"] = list(msg.mobiles)
        return {"msgtype": "text", "text": text}
    # WeCom markdown has no mention list; <@userid> needs WeCom ids we do not keep.
    return {
        "msgtype": "markdown",
        "markdown": {"content": _truncate_bytes(msg.markdown, WECOM_MARKDOWN_MAX_BYTES)},
    }


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's `sign` query value: URL-encoded base64(HMAC-SHA256(secret, "ts\\nsecret"))."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def mqtt_topic(alert: Mapping[str, Any], prefix: str = "hm/alerts/v1") -> str:
    """`hm/alerts/v1/{domain}/{device_id}`; a site or system alert has no device, so the
    site id (else `system`) stands in, and `system` for a missing domain."""
    domain = alert.get("domain") or "system"
    dev = alert.get("device_id") or alert.get("site_id") or "system"
    return f"{prefix}/{domain}/{dev}"
