"""Delivery: claim due ledger rows, send them concurrently, record each attempt, and
decide retry (capped exponential backoff with jitter), final failure, fallback channel,
and the `channel failing` / `nobody reachable` system alerts."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.notify import store
from alerts.notify.channels import ChannelSet
from alerts.notify.context import (
    RULE_CHANNEL_FAILING,
    RULE_NOBODY_REACHABLE,
    Pass,
    RunReport,
)
from alerts.notify.decide import GiveUp, after_failure
from alerts.notify.errors import DeliveryError
from alerts.notify.render import Message

logger = logging.getLogger(__name__)

# Timeline kinds for accepted notifications, by purpose.
TIMELINE_KIND = {
    "fired": "notified",
    "reminder": "reminded",
    "escalation": "escalated_notify",
    "severity_raised": "notified",
    "acknowledged": "notified",
    "resolved": "notified",
    "fired_resolved": "notified",
}
# Rounds per pass, so a fallback queued by a final failure goes out in the same pass.
MAX_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class Outcome:
    row: dict[str, Any]
    ok: bool
    status_code: int | None
    error: str
    retryable: bool
    duration_ms: float


class Deliverer:
    """Sends due notifications over the channel set, at most `concurrency` at once."""

    def __init__(self, channels: ChannelSet, *, concurrency: int, batch_limit: int) -> None:
        self._channels = channels
        self._sem = asyncio.Semaphore(concurrency)
        self._batch_limit = batch_limit

    async def deliver(self, p: Pass, now: datetime, r: RunReport) -> None:
        # A few rounds, so a fallback queued by a final failure goes out in this pass.
        for _ in range(MAX_ROUNDS):
            claimed = await store.claim_due(p.conn, now, self._batch_limit)
            if not claimed:
                return
            outcomes = await asyncio.gather(*(self._attempt(p, row) for row in claimed))
            for o in outcomes:
                async with p.conn.transaction():
                    await self._record(p, o, now, r)

    async def _attempt(self, p: Pass, row: dict[str, Any]) -> Outcome:
        cfg = p.cfg.channel(row["channel_id"])
        t0 = time.monotonic()
        async with self._sem:
            try:
                if cfg is None or not cfg.enabled:
                    raise DeliveryError(
                        row["channel_id"], "channel not configured", retryable=False
                    )
                ch = await self._channels.get(cfg)
                code = await ch.send(Message.from_json(row["message"]), int(row["id"]))
                return Outcome(row, True, code, "", False, (time.monotonic() - t0) * 1000)
            except DeliveryError as exc:
                return Outcome(
                    row,
                    False,
                    exc.status_code,
                    exc.reason,
                    exc.retryable,
                    (time.monotonic() - t0) * 1000,
                )

    async def _record(self, p: Pass, o: Outcome, now: datetime, r: RunReport) -> None:
        row, nid, ch = o.row, int(o.row["id"]), o.row["channel_id"]
        r.attempts += 1
        await store.record_attempt(
            p.conn,
            notification_id=nid,
            attempt=row["attempts"],
            now=now,
            ok=o.ok,
            status_code=o.status_code,
            error=o.error,
            duration_ms=o.duration_ms,
        )
        if o.ok:
            r.accepted += 1
            await store.set_state(p.conn, nid, "accepted", now)
            await store.channel_succeeded(p.conn, ch, now)
            await store.resolve_system_alert(
                p.conn,
                rule_id=RULE_CHANNEL_FAILING,
                subject=f"channel:{ch}",
                now=now,
                note=f"channel {ch} delivered again",
            )
            if row["purpose"] != "state":
                for aid in row["alert_ids"]:
                    await store.add_timeline(
                        p.conn,
                        aid,
                        TIMELINE_KIND.get(row["purpose"], "notified"),
                        now,
                        note=f"{row['purpose']} via {ch} to {row['group_id']}",
                        data={
                            "notification_id": nid,
                            "channel": ch,
                            "group": row["group_id"],
                            "level": row["level"],
                            "purpose": row["purpose"],
                            "attempts": row["attempts"],
                        },
                    )
                    await store.resolve_system_alert(
                        p.conn,
                        rule_id=RULE_NOBODY_REACHABLE,
                        subject=f"alert:{aid}",
                        now=now,
                        note="reached someone",
                    )
            return
        r.attempt_failures += 1
        r.failures_by_channel[ch] = r.failures_by_channel.get(ch, 0) + 1
        logger.warning(
            "notification %d via %s failed (attempt %d): %s", nid, ch, row["attempts"], o.error
        )
        streak = await store.channel_failed(p.conn, ch, o.error, now)
        if streak >= p.cfg.delivery.channel_failing_after:
            opened = await store.raise_system_alert(
                p.conn,
                rule_id=RULE_CHANNEL_FAILING,
                subject=f"channel:{ch}",
                severity="warning",
                message=f"通知渠道 {ch} 连续 {streak} 次发送失败: {o.error}",
                now=now,
                data={"channel": ch, "consecutive_failures": streak, "error": o.error},
            )
            r.system_alerts += opened is not None
        decision = after_failure(
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            retryable=o.retryable,
            backoff=p.backoff,
            rng=p.rng,
            now=now,
        )
        if not isinstance(decision, GiveUp):
            r.retries += 1
            await store.set_state(
                p.conn, nid, "queued", now, next_attempt_at=decision.at, error=o.error
            )
            return
        r.failed += 1
        await store.set_state(p.conn, nid, "failed", now, error=o.error)
        if row["purpose"] != "state":
            for aid in row["alert_ids"]:
                await store.add_timeline(
                    p.conn,
                    aid,
                    "notify_failed",
                    now,
                    note=f"{ch}: {o.error}",
                    data={
                        "notification_id": nid,
                        "channel": ch,
                        "group": row["group_id"],
                        "attempts": row["attempts"],
                    },
                )
        cfg = p.cfg.channel(ch)
        tried = await store.fallback_chain(p.conn, nid)
        if cfg is not None and cfg.fallback and cfg.fallback not in tried:
            r.fallbacks += 1
            await p.queue(
                now,
                r,
                batch_id=row["batch_id"],
                alert_ids=row["alert_ids"],
                route_id=row["route_id"],
                level=row["level"],
                purpose=row["purpose"],
                channel_id=cfg.fallback,
                group_id=row["group_id"],
                msg=Message.from_json(row["message"]),
                fallback_of=nid,
            )
            return
        if (
            row["batch_id"] is not None
            and row["purpose"] in ("fired", "escalation", "reminder")
            and not await store.batch_still_reachable(p.conn, row["batch_id"])
        ):
            alerts = await store.fetch_alerts(p.conn, row["alert_ids"])
            for a in alerts.values():
                await p.nobody_reachable(a, now, r, f"every channel failed; last {ch}: {o.error}")
