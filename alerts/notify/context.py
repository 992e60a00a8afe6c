"""What every step of a notifier pass shares: the connection, the configuration, the
counters, and two steps used everywhere (queue a ledger row, raise `nobody reachable`)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from alerts.notify import store
from alerts.notify.config import NotifyConfig
from alerts.notify.decide import Backoff
from alerts.notify.render import Message

logger = logging.getLogger(__name__)

RULE_CHANNEL_FAILING = "system.channel_failing"
RULE_NOBODY_REACHABLE = "system.nobody_reachable"


@dataclass(slots=True)
class NotifyStats:
    """Counters for /metrics (monotonic over the notifier's life)."""

    events: int = 0
    queued: int = 0
    attempts: int = 0
    accepted: int = 0
    attempt_failures: int = 0
    retries: int = 0
    failed: int = 0
    fallbacks: int = 0
    silenced: int = 0
    reminders: int = 0
    escalations: int = 0
    system_alerts: int = 0
    failures_by_channel: dict[str, int] = field(default_factory=dict)

    def add(self, other: NotifyStats) -> None:
        for f in fields(NotifyStats):
            if f.name == "failures_by_channel":
                for k, v in other.failures_by_channel.items():
                    self.failures_by_channel[k] = self.failures_by_channel.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class RunReport(NotifyStats):
    """What one `run_once` did, and when something is next due."""

    next_due_at: datetime | None = None


def labels(a: dict[str, Any]) -> dict[str, str | None]:
    """The alert fields routes, contact groups and silences match on."""
    return {
        "region": a.get("region"),
        "site_id": a.get("site_id"),
        "device_id": a.get("device_id"),
        "domain": a.get("domain"),
        "rule_id": a.get("rule_id"),
        "severity": a.get("severity"),
        "kind": a.get("kind"),
        "alert_id": str(a["id"]),
    }


@dataclass(slots=True)
class Pass:
    """One `run_once`: its connection, configuration, retry policy and randomness."""

    conn: store.Conn
    cfg: NotifyConfig
    backoff: Backoff
    rng: random.Random

    async def queue(
        self,
        now: datetime,
        r: RunReport,
        *,
        batch_id: int | None,
        alert_ids: list[UUID],
        route_id: str | None,
        level: int,
        purpose: str,
        channel_id: str,
        group_id: str | None,
        msg: Message,
        fallback_of: int | None = None,
    ) -> int:
        r.queued += 1
        return await store.insert_notification(
            self.conn,
            batch_id=batch_id,
            alert_ids=alert_ids,
            route_id=route_id,
            level=level,
            purpose=purpose,
            channel_id=channel_id,
            group_id=group_id,
            state="queued",
            message=msg.to_json(),
            max_attempts=self.cfg.delivery.max_attempts,
            now=now,
            fallback_of=fallback_of,
        )

    async def nobody_reachable(
        self, alert: dict[str, Any], now: datetime, r: RunReport, why: str
    ) -> None:
        if alert.get("kind") == "system":
            logger.error("system alert %s reaches nobody: %s", alert["id"], why)
            return
        place = alert.get("site_id") or alert.get("device_id") or "-"
        opened = await store.raise_system_alert(
            self.conn,
            rule_id=RULE_NOBODY_REACHABLE,
            subject=f"alert:{alert['id']}",
            severity="critical",
            site_id=alert.get("site_id"),
            region=alert.get("region"),
            message=f"告警 {alert['rule_id']} ({place}) 无人可达: {why}",
            now=now,
            data={"alert_id": str(alert["id"]), "reason": why},
        )
        r.system_alerts += opened is not None
