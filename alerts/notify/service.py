"""The Notifier: reads `alert_events` as an outbox, schedules notifications, delivers
them with retries and fallbacks, and records every step in the ledger and on the
alert's timeline.

    async with Notifier(dsn=dsn) as notifier:
        await notifier.run()              # the service
        report = await notifier.run_once(now)   # finite mode (tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from uuid import UUID

import psycopg

from alerts.notify import store
from alerts.notify.channels import ChannelSet
from alerts.notify.config import NotifyConfig, Route
from alerts.notify.decide import (
    Backoff,
    Cursor,
    Done,
    GiveUp,
    Notify,
    Silenced,
    active_silence,
    advance_cursor,
    after_failure,
    applied,
    group_due_at,
    group_key,
    next_action,
    next_due_at,
    route_alert,
    step_targets,
)
from alerts.notify.errors import DeliveryError
from alerts.notify.render import Message, alert_to_contract_dict, render_message

logger = logging.getLogger(__name__)

# Event kinds the notifier acts on. Its own timeline rows (notified, reminded,
# escalated_notify, silenced, notify_failed) are passed over, so they never re-trigger.
ACT_KINDS = frozenset({"fired", "escalated", "acknowledged", "resolved"})
TIMELINE_KIND = {
    "fired": "notified",
    "reminder": "reminded",
    "escalation": "escalated_notify",
    "severity_raised": "notified",
    "acknowledged": "notified",
    "resolved": "notified",
}
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
        for f in fields(self):
            if f.name == "failures_by_channel":
                for k, v in other.failures_by_channel.items():
                    self.failures_by_channel[k] = self.failures_by_channel.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class RunReport(NotifyStats):
    """What one `run_once` did, and when something is next due."""

    next_due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    row: dict[str, Any]
    ok: bool
    status_code: int | None
    error: str
    retryable: bool
    duration_ms: float


def _labels(a: dict[str, Any]) -> dict[str, str | None]:
    return {
        "region": a.get("region"), "site_id": a.get("site_id"), "device_id": a.get("device_id"),
        "domain": a.get("domain"), "rule_id": a.get("rule_id"), "severity": a.get("severity"),
        "kind": a.get("kind"), "alert_id": str(a["id"]),
    }  # fmt: skip


class Notifier:
    """The notification service; an async context manager.

    Args:
        dsn: libpq connection string of the healthmon database.
        name: cursor name; notifiers sharing a name share the work (rows are locked).
        poll_interval_s: the fallback scan when no NOTIFY arrives.
        gap_grace_s: how long a missing event id holds the cursor (an uncommitted insert).
        backoff: overrides the configured retry backoff (tests shrink it).
        rng: randomness for the jitter.
        batch_limit: events read per outbox page; notifications sent per round.
        send_concurrency: deliveries in flight at once.
    """

    def __init__(
        self,
        *,
        dsn: str,
        name: str = "default",
        poll_interval_s: float = 5.0,
        gap_grace_s: float = 30.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        batch_limit: int = 500,
        send_concurrency: int = 16,
    ) -> None:
        if poll_interval_s <= 0 or batch_limit <= 0 or send_concurrency <= 0:
            raise ValueError("poll_interval_s, batch_limit and send_concurrency must be positive")
        self._dsn = dsn
        self.name = name
        self._poll_interval_s = poll_interval_s
        self._gap_grace_s = gap_grace_s
        self._backoff_override = backoff
        self._rng = rng or random.Random()
        self._batch_limit = batch_limit
        self._sem = asyncio.Semaphore(send_concurrency)
        self._conn: store.Conn | None = None
        self._channels: ChannelSet | None = None
        self._cfg = NotifyConfig()
        self._cfg_version: str | None = None
        self._gaps: dict[int, datetime] = {}
        self._wake = asyncio.Event()
        self.stats = NotifyStats()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Notifier:
        self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        self._channels = ChannelSet()
        await self._channels.__aenter__()
        await self._reload(force=True)
        n = await store.requeue_stale_sent(self._conn, datetime.now(UTC))
        if n:
            logger.warning("requeued %d notifications whose outcome a restart lost", n)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._channels is not None:
            await self._channels.__aexit__(et, e, tb)
            self._channels = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> store.Conn:
        if self._conn is None:
            raise RuntimeError("Notifier used outside `async with`")
        return self._conn

    @property
    def config(self) -> NotifyConfig:
        return self._cfg

    async def _reload(self, *, force: bool = False) -> None:
        version = await store.config_version(self.conn)
        if not force and version == self._cfg_version:
            return
        self._cfg_version, self._cfg = await store.load_config(self.conn)
        assert self._channels is not None
        await self._channels.retain_only({c.id for c in self._cfg.channels})
        logger.info("notification config %s loaded", self._cfg_version)

    def _backoff(self) -> Backoff:
        return self._backoff_override or Backoff.from_delivery(self._cfg.delivery)

    # ------------------------------------------------------------ the service loop

    async def run(self) -> None:
        """Run until cancelled: woken by NOTIFY, else every `poll_interval_s`."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen_loop(), name="alerts.notify.listen")
            tg.create_task(self._work_loop(), name="alerts.notify.work")

    async def _listen_loop(self) -> None:
        backoff, attempt = Backoff(base_s=0.5, cap_s=30.0), 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as c:
                    await c.execute(f"LISTEN {store.EVENTS_CHANNEL}")
                    await c.execute(f"LISTEN {store.CONFIG_CHANNEL}")
                    attempt = 0
                    self._wake.set()  # anything committed while we were not listening
                    async for _ in c.notifies():
                        self._wake.set()
            except psycopg.OperationalError as exc:
                attempt += 1
                delay = backoff.delay_s(attempt, self._rng)
                logger.warning("notify listener lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _work_loop(self) -> None:
        backoff, attempt = Backoff(base_s=0.5, cap_s=30.0), 0
        while True:
            self._wake.clear()
            try:
                report = await self.run_once(datetime.now(UTC))
                attempt = 0
            except psycopg.OperationalError as exc:
                attempt += 1
                delay = backoff.delay_s(attempt, self._rng)
                logger.warning("notifier database error (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                await self._reconnect()
                continue
            timeout = self._poll_interval_s
            if report.next_due_at is not None:
                due_in = (report.next_due_at - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, min(timeout, due_in))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _reconnect(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            logger.warning("notifier reconnect failed: %s", exc)

    # ------------------------------------------------------------ one pass

    async def run_once(self, now: datetime) -> RunReport:
        """One full pass at `now`: outbox, schedule, grouping, delivery. Finite; for
        tests drive it with explicit (future) `now`s."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        r = RunReport()
        await self._reload()
        await self._process_outbox(now, r)
        sched_due = await self._schedule(now, r)
        await self._flush_batches(now, r)
        await self._deliver(now, r)
        times = await store.next_times(self.conn)
        if sched_due is not None:
            times.append(sched_due)
        if self._gaps:
            times.append(min(self._gaps.values()) + timedelta(seconds=self._gap_grace_s))
        r.next_due_at = min(times) if times else None
        self.stats.add(r)
        return r

    # ------------------------------------------------------------ outbox

    async def _process_outbox(self, now: datetime, r: RunReport) -> None:
        while True:
            async with self.conn.transaction():
                base = await store.lock_cursor(self.conn, self.name)
                cursor = Cursor(base.last_id, base.processed_above, self._gaps)
                rows = await store.fetch_events(self.conn, cursor, self._batch_limit)
                alerts = await store.fetch_alerts(
                    self.conn, {e["alert_id"] for e in rows if e["kind"] in ACT_KINDS}
                )
                for ev in rows:
                    if ev["kind"] in ACT_KINDS and ev["alert_id"] in alerts:
                        r.events += 1
                        await self._on_event(ev, alerts[ev["alert_id"]], now, r)
                cursor = advance_cursor(cursor, [e["id"] for e in rows], now, self._gap_grace_s)
                self._gaps = dict(cursor.gaps)
                await store.save_cursor(self.conn, self.name, cursor, now)
            if len(rows) < self._batch_limit:
                return

    async def _on_event(
        self, ev: dict[str, Any], alert: dict[str, Any], now: datetime, r: RunReport
    ) -> None:
        kind, labels, aid = ev["kind"], _labels(alert), alert["id"]
        for ch in self._cfg.delivery.broadcast:
            msg = render_message(purpose="state", level=0, alerts=[alert_to_contract_dict(alert)])
            await self._queue(now, r, batch_id=None, alert_ids=[aid], route_id=None, level=0,
                              purpose="state", channel_id=ch, group_id=None, msg=msg)  # fmt: skip
        existing = {p["route_id"]: p for p in await store.progress_rows(self.conn, aid)}
        if kind in ("fired", "escalated"):
            if alert["state"] != "firing":
                return  # acknowledged or resolved before we got to it: nobody to wake
            routes = route_alert(self._cfg.routes, labels)
            for route in routes:
                if route.id not in existing:
                    await store.start_progress(self.conn, aid, route.id, now)
            if not routes and not existing:
                await self._nobody_reachable(alert, now, r, "no route matches the alert")
            if kind == "escalated":  # severity raised: tell whoever already knows
                for p in existing.values():
                    if p["level"] >= 0 and not p["done"]:
                        await self._enqueue(
                            alert, p["route_id"], p["level"], "severity_raised", now
                        )
            return
        # acknowledged / resolved: tell those notified so far, then stop the ladder.
        want = (
            self._cfg.delivery.notify_acknowledged
            if kind == "acknowledged"
            else self._cfg.delivery.notify_resolved
        )
        for p in existing.values():
            if want and p["level"] >= 0:
                await self._enqueue(alert, p["route_id"], p["level"], kind, now)
            await store.save_progress(
                self.conn, aid, p["route_id"], store.progress_of(p), done=True
            )
        if kind == "resolved":
            await store.resolve_system_alert(
                self.conn, rule_id=RULE_NOBODY_REACHABLE, subject=f"alert:{aid}", now=now,
                note="the alert was resolved",
            )  # fmt: skip

    async def _enqueue(
        self, alert: dict[str, Any], route_id: str, level: int, purpose: str, now: datetime
    ) -> None:
        route = self._cfg.route(route_id)
        await store.add_to_batch(
            self.conn,
            key=group_key(route_id, level, purpose, _labels(alert)),
            route_id=route_id, level=level, purpose=purpose, alert_id=alert["id"],
            due_at=group_due_at(now, route, purpose), now=now,
        )  # fmt: skip

    # ------------------------------------------------------------ schedule

    async def _schedule(self, now: datetime, r: RunReport) -> datetime | None:
        """Apply `next_action` to every open (alert, route); returns the next due time."""
        soonest: datetime | None = None
        async with self.conn.transaction():
            silences = await store.active_silences(self.conn, now)
            for row in await store.open_progress(self.conn):
                aid, route = row["id"], self._cfg.route(row["route_id"])
                progress = store.progress_of(row)
                if route is None:  # the route was removed by a config load
                    await store.save_progress(self.conn, aid, row["route_id"], progress, done=True)
                    continue
                labels = _labels(row)
                silence = active_silence(silences, labels, now)
                action = next_action(
                    state=row["state"], held_back=row["suppressed_by"] is not None,
                    progress=progress, route=route, silence=silence, now=now,
                )  # fmt: skip
                if isinstance(action, Done):
                    await store.save_progress(self.conn, aid, route.id, progress, done=True)
                    continue
                if isinstance(action, Silenced):
                    await self._record_silenced(
                        row, route, max(progress.level, 0), action.silence_id, now, r
                    )
                elif isinstance(action, Notify):
                    await self._enqueue(row, route.id, action.level, action.purpose, now)
                    r.reminders += action.purpose == "reminder"
                    r.escalations += action.purpose == "escalation"
                new = applied(progress, action, now) if action is not None else progress
                if action is not None:
                    await store.save_progress(self.conn, aid, route.id, new, done=False)
                due = next_due_at(new, route)
                if due is not None and (soonest is None or due < soonest):
                    soonest = due
        return soonest

    async def _record_silenced(
        self,
        alert: dict[str, Any],
        route: Route,
        level: int,
        silence_id: UUID,
        now: datetime,
        r: RunReport,
    ) -> None:
        info = await store.silence_info(self.conn, silence_id)
        await store.insert_notification(
            self.conn, batch_id=None, alert_ids=[alert["id"]], route_id=route.id, level=level,
            purpose="fired", channel_id=None, group_id=None, state="silenced", message={},
            max_attempts=0, now=now, silence_id=silence_id,
        )  # fmt: skip
        await store.add_timeline(
            self.conn, alert["id"], "silenced", now,
            note=f"notifications muted by silence {silence_id}",
            data={"silence_id": str(silence_id), "route": route.id, **info},
        )  # fmt: skip
        r.silenced += 1

    # ------------------------------------------------------------ grouping -> ledger

    async def _flush_batches(self, now: datetime, r: RunReport) -> None:
        async with self.conn.transaction():
            silences = await store.active_silences(self.conn, now)
            for b in await store.due_batches(self.conn, now):
                await store.mark_flushed(self.conn, b["id"], now)
                alerts = await store.fetch_alerts(self.conn, b["alert_ids"])
                purpose, level = b["purpose"], b["level"]
                route = self._cfg.route(b["route_id"] or "")
                live: list[dict[str, Any]] = []
                for aid in b["alert_ids"]:
                    a = alerts.get(aid)
                    if a is None or (
                        purpose not in ("acknowledged", "resolved") and a["state"] != "firing"
                    ):
                        continue  # acknowledged or resolved while waiting for companions
                    s = active_silence(silences, _labels(a), now)
                    if s is not None and route is not None:
                        await self._record_silenced(a, route, level, s.id, now, r)
                        continue
                    live.append(a)
                if live and route is not None:
                    await self._batch_to_ledger(b["id"], live, route, level, purpose, now, r)

    async def _batch_to_ledger(
        self, batch_id: int, alerts: list[dict[str, Any]], route: Route, level: int, purpose: str,
        now: datetime, r: RunReport,
    ) -> None:  # fmt: skip
        labels = _labels(alerts[0])
        rungs = (
            route.ladder[: level + 1]
            if purpose in ("acknowledged", "resolved")
            else [route.ladder[min(level, len(route.ladder) - 1)]]
        )
        groups = []
        for step in rungs:
            groups += [
                g for g in step_targets(step, self._cfg.contact_groups, labels) if g not in groups
            ]
        dicts = [alert_to_contract_dict(a) for a in alerts]
        queued = 0
        for g in groups:
            msg = render_message(
                purpose=purpose, level=level, alerts=dicts, tier=rungs[-1].tier,
                mobiles=[m.phone for m in g.members if m.phone],
                emails=[m.email for m in g.members if m.email],
            )  # fmt: skip
            for ch in g.channels:
                cfg = self._cfg.channel(ch)
                if cfg is None or not cfg.enabled:
                    continue
                await self._queue(now, r, batch_id=batch_id, alert_ids=[a["id"] for a in alerts],
                                  route_id=route.id, level=level, purpose=purpose, channel_id=ch,
                                  group_id=g.id, msg=msg)  # fmt: skip
                queued += 1
        if queued == 0 and purpose in ("fired", "escalation"):
            why = f"route {route.id} level {level}: no contact group with an enabled channel"
            for a in alerts:
                await store.add_timeline(self.conn, a["id"], "notify_failed", now, note=why,
                                         data={"route": route.id, "level": level})  # fmt: skip
                if level == 0:
                    await self._nobody_reachable(a, now, r, why)

    async def _queue(
        self, now: datetime, r: RunReport, *, batch_id: int | None, alert_ids: list[UUID],
        route_id: str | None, level: int, purpose: str, channel_id: str, group_id: str | None,
        msg: Message, fallback_of: int | None = None,
    ) -> int:  # fmt: skip
        r.queued += 1
        return await store.insert_notification(
            self.conn, batch_id=batch_id, alert_ids=alert_ids, route_id=route_id, level=level,
            purpose=purpose, channel_id=channel_id, group_id=group_id, state="queued",
            message=msg.to_json(), max_attempts=self._cfg.delivery.max_attempts, now=now,
            fallback_of=fallback_of,
        )  # fmt: skip

    # ------------------------------------------------------------ delivery

    async def _deliver(self, now: datetime, r: RunReport) -> None:
        # A few rounds, so a fallback queued by a final failure goes out in this pass.
        for _ in range(8):
            claimed = await store.claim_due(self.conn, now, self._batch_limit)
            if not claimed:
                return
            outcomes = await asyncio.gather(*(self._attempt(row) for row in claimed))
            for o in outcomes:
                async with self.conn.transaction():
                    await self._record(o, now, r)

    async def _attempt(self, row: dict[str, Any]) -> _Outcome:
        cfg = self._cfg.channel(row["channel_id"])
        t0 = time.monotonic()
        async with self._sem:
            try:
                if cfg is None or not cfg.enabled:
                    raise DeliveryError(
                        row["channel_id"], "channel not configured", retryable=False
                    )
                assert self._channels is not None
                ch = await self._channels.get(cfg)
                code = await ch.send(Message.from_json(row["message"]), int(row["id"]))
                return _Outcome(row, True, code, "", False, (time.monotonic() - t0) * 1000)
            except DeliveryError as exc:
                return _Outcome(row, False, exc.status_code, exc.reason, exc.retryable,
                                (time.monotonic() - t0) * 1000)  # fmt: skip

    async def _record(self, o: _Outcome, now: datetime, r: RunReport) -> None:
        row, nid, ch = o.row, int(o.row["id"]), o.row["channel_id"]
        r.attempts += 1
        await store.record_attempt(
            self.conn, notification_id=nid, attempt=row["attempts"], now=now, ok=o.ok,
            status_code=o.status_code, error=o.error, duration_ms=o.duration_ms,
        )  # fmt: skip
        if o.ok:
            r.accepted += 1
            await store.set_state(self.conn, nid, "accepted", now)
            await store.channel_succeeded(self.conn, ch, now)
            await store.resolve_system_alert(
                self.conn, rule_id=RULE_CHANNEL_FAILING, subject=f"channel:{ch}", now=now,
                note=f"channel {ch} delivered again",
            )  # fmt: skip
            if row["purpose"] != "state":
                for aid in row["alert_ids"]:
                    await store.add_timeline(
                        self.conn, aid, TIMELINE_KIND.get(row["purpose"], "notified"), now,
                        note=f"{row['purpose']} via {ch} to {row['group_id']}",
                        data={"notification_id": nid, "channel": ch, "group": row["group_id"],
                              "level": row["level"], "purpose": row["purpose"],
                              "attempts": row["attempts"]},
                    )  # fmt: skip
                    await store.resolve_system_alert(
                        self.conn, rule_id=RULE_NOBODY_REACHABLE, subject=f"alert:{aid}", now=now,
                        note="reached someone",
                    )  # fmt: skip
            return
        r.attempt_failures += 1
        r.failures_by_channel[ch] = r.failures_by_channel.get(ch, 0) + 1
        logger.warning(
            "notification %d via %s failed (attempt %d): %s", nid, ch, row["attempts"], o.error
        )
        streak = await store.channel_failed(self.conn, ch, o.error, now)
        if streak >= self._cfg.delivery.channel_failing_after:
            opened = await store.raise_system_alert(
                self.conn, rule_id=RULE_CHANNEL_FAILING, subject=f"channel:{ch}", severity="warning",
                message=f"通知渠道 {ch} 连续 {streak} 次发送失败: {o.error}", now=now,
                data={"channel": ch, "consecutive_failures": streak, "error": o.error},
            )  # fmt: skip
            r.system_alerts += opened is not None
        decision = after_failure(
            attempts=row["attempts"], max_attempts=row["max_attempts"], retryable=o.retryable,
            backoff=self._backoff(), rng=self._rng, now=now,
        )  # fmt: skip
        if not isinstance(decision, GiveUp):
            r.retries += 1
            await store.set_state(
                self.conn, nid, "queued", now, next_attempt_at=decision.at, error=o.error
            )
            return
        r.failed += 1
        await store.set_state(self.conn, nid, "failed", now, error=o.error)
        if row["purpose"] != "state":
            for aid in row["alert_ids"]:
                await store.add_timeline(
                    self.conn, aid, "notify_failed", now, note=f"{ch}: {o.error}",
                    data={"notification_id": nid, "channel": ch, "group": row["group_id"],
                          "attempts": row["attempts"]},
                )  # fmt: skip
        cfg = self._cfg.channel(ch)
        tried = await store.fallback_chain(self.conn, nid)
        if cfg is not None and cfg.fallback and cfg.fallback not in tried:
            r.fallbacks += 1
            await self._queue(
                now, r, batch_id=row["batch_id"], alert_ids=row["alert_ids"], route_id=row["route_id"],
                level=row["level"], purpose=row["purpose"], channel_id=cfg.fallback,
                group_id=row["group_id"], msg=Message.from_json(row["message"]), fallback_of=nid,
            )  # fmt: skip
            return
        if row["batch_id"] is not None and row["purpose"] in ("fired", "escalation", "reminder"):
            if not await store.batch_still_reachable(self.conn, row["batch_id"]):
                alerts = await store.fetch_alerts(self.conn, row["alert_ids"])
                for a in alerts.values():
                    await self._nobody_reachable(
                        a, now, r, f"every channel failed; last {ch}: {o.error}"
                    )

    async def _nobody_reachable(
        self, alert: dict[str, Any], now: datetime, r: RunReport, why: str
    ) -> None:
        if alert.get("kind") == "system":
            logger.error("system alert %s reaches nobody: %s", alert["id"], why)
            return
        opened = await store.raise_system_alert(
            self.conn, rule_id=RULE_NOBODY_REACHABLE, subject=f"alert:{alert['id']}",
            severity="critical", site_id=alert.get("site_id"), region=alert.get("region"),
            message=f"告警 {alert['rule_id']} ({alert.get('site_id') or alert.get('device_id') or '-'}) 无人可达: {why}",
            now=now, data={"alert_id": str(alert["id"]), "reason": why},
        )  # fmt: skip
        r.system_alerts += opened is not None
