"""Planning: outbox events and the escalation schedule become batches (grouping), and due
batches become ledger rows, one per contact group and channel. Silences are applied here."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from alerts.lifecycle import alert_to_contract_dict
from alerts.notify import store
from alerts.notify.config import Route
from alerts.notify.context import RULE_NOBODY_REACHABLE, Pass, RunReport
from alerts.notify.context import labels as alert_labels
from alerts.notify.decide import (
    Done,
    Notify,
    Progress,
    Silenced,
    active_silence,
    applied,
    group_due_at,
    group_key,
    next_action,
    next_due_at,
    route_alert,
    step_targets,
)
from alerts.notify.render import render_message

logger = logging.getLogger(__name__)


async def on_event(
    p: Pass, ev: dict[str, Any], alert: dict[str, Any], now: datetime, r: RunReport
) -> None:
    kind, labels, aid = ev["kind"], alert_labels(alert), alert["id"]
    for ch in p.cfg.delivery.broadcast:
        msg = render_message(purpose="state", level=0, alerts=[alert_to_contract_dict(alert)])
        await p.queue(
            now,
            r,
            batch_id=None,
            alert_ids=[aid],
            route_id=None,
            level=0,
            purpose="state",
            channel_id=ch,
            group_id=None,
            msg=msg,
        )
    existing = {row["route_id"]: row for row in await store.progress_rows(p.conn, aid)}
    if kind in ("fired", "escalated"):
        if kind == "fired" and alert["state"] == "resolved":
            # A retrospective episode (a late backlog) or one that cleared before we read
            # it: the first rung is told once that it happened and is over. No ladder.
            await _tell_resolved_episode(p, alert, labels, existing, now)
            return
        if alert["state"] != "firing":
            return  # acknowledged before we got to it: someone already knows
        routes = route_alert(p.cfg.routes, labels)
        for route in routes:
            if route.id not in existing:
                await store.start_progress(p.conn, aid, route.id, now)
        if not routes and not existing and p.cfg.routes:
            # With no routes at all, notifications are simply not set up: no alert for it.
            await p.nobody_reachable(alert, now, r, "no route matches the alert")
        if kind == "escalated":  # severity raised: tell whoever already knows
            for prog in existing.values():
                if prog["level"] >= 0 and not prog["done"]:
                    await enqueue(p, alert, prog["route_id"], prog["level"], "severity_raised", now)
        return
    # acknowledged / resolved: tell those notified so far, then stop the ladder.
    want = (
        p.cfg.delivery.notify_acknowledged
        if kind == "acknowledged"
        else p.cfg.delivery.notify_resolved
    )
    for prog in existing.values():
        if want and prog["level"] >= 0:
            await enqueue(p, alert, prog["route_id"], prog["level"], kind, now)
        await store.save_progress(p.conn, aid, prog["route_id"], store.progress_of(prog), done=True)
    if kind == "resolved":
        await store.resolve_system_alert(
            p.conn,
            rule_id=RULE_NOBODY_REACHABLE,
            subject=f"alert:{aid}",
            now=now,
            note="the alert was resolved",
        )


async def _tell_resolved_episode(
    p: Pass,
    alert: dict[str, Any],
    labels: Any,
    existing: dict[str, Any],
    now: datetime,
) -> None:
    silences = await store.active_silences(p.conn, now)
    if active_silence(silences, labels, now) is not None:
        return
    for route in route_alert(p.cfg.routes, labels):
        if route.id in existing or not await store.start_progress(
            p.conn, alert["id"], route.id, now
        ):
            continue
        await enqueue(p, alert, route.id, 0, "fired_resolved", now)
        done = Progress(level=0, first_notified_at=now, last_notified_at=now)
        await store.save_progress(p.conn, alert["id"], route.id, done, done=True)


async def enqueue(
    p: Pass, alert: dict[str, Any], route_id: str, level: int, purpose: str, now: datetime
) -> None:
    route = p.cfg.route(route_id)
    await store.add_to_batch(
        p.conn,
        key=group_key(route_id, level, purpose, alert_labels(alert)),
        route_id=route_id,
        level=level,
        purpose=purpose,
        alert_id=alert["id"],
        due_at=group_due_at(now, route, purpose),
        now=now,
    )


async def schedule(p: Pass, now: datetime, r: RunReport) -> datetime | None:
    """Apply `next_action` to every open (alert, route); returns the next due time."""
    soonest: datetime | None = None
    async with p.conn.transaction():
        silences = await store.active_silences(p.conn, now)
        for row in await store.open_progress(p.conn):
            aid, route = row["id"], p.cfg.route(row["route_id"])
            progress = store.progress_of(row)
            if route is None:  # the route was removed by a config load
                await store.save_progress(p.conn, aid, row["route_id"], progress, done=True)
                continue
            labels = alert_labels(row)
            silence = active_silence(silences, labels, now)
            action = next_action(
                state=row["state"],
                held_back=row["suppressed_by"] is not None,
                progress=progress,
                route=route,
                silence=silence,
                now=now,
            )
            if isinstance(action, Done):
                await store.save_progress(p.conn, aid, route.id, progress, done=True)
                continue
            if isinstance(action, Silenced):
                await record_silenced(
                    p, row, route, max(progress.level, 0), action.silence_id, now, r
                )
            elif isinstance(action, Notify):
                await enqueue(p, row, route.id, action.level, action.purpose, now)
                r.reminders += action.purpose == "reminder"
                r.escalations += action.purpose == "escalation"
            new = applied(progress, action, now) if action is not None else progress
            if action is not None:
                await store.save_progress(p.conn, aid, route.id, new, done=False)
            # A muted or held-back alert waits for its silence or site alert to end, which
            # the periodic scan notices; its overdue rung must not make the loop spin.
            due = None if silence or row["suppressed_by"] else next_due_at(new, route)
            if due is not None and (soonest is None or due < soonest):
                soonest = due
    return soonest


async def record_silenced(
    p: Pass,
    alert: dict[str, Any],
    route: Route,
    level: int,
    silence_id: UUID,
    now: datetime,
    r: RunReport,
    purpose: str = "fired",
) -> None:
    """Ledger row `silenced` and a timeline step naming the silence, its owner and reason;
    the progress remembers the silence so it is recorded once."""
    info = await store.silence_info(p.conn, silence_id)
    await store.mark_silenced(p.conn, alert["id"], route.id, silence_id)
    await store.insert_notification(
        p.conn,
        batch_id=None,
        alert_ids=[alert["id"]],
        route_id=route.id,
        level=level,
        purpose=purpose,
        channel_id=None,
        group_id=None,
        state="silenced",
        message={},
        max_attempts=0,
        now=now,
        silence_id=silence_id,
    )
    await store.add_timeline(
        p.conn,
        alert["id"],
        "silenced",
        now,
        note=f"notifications muted by silence {silence_id}",
        data={"silence_id": str(silence_id), "route": route.id, **info},
    )
    r.silenced += 1


async def flush_batches(p: Pass, now: datetime, r: RunReport) -> None:
    async with p.conn.transaction():
        silences = await store.active_silences(p.conn, now)
        for b in await store.due_batches(p.conn, now):
            await store.mark_flushed(p.conn, b["id"], now)
            alerts = await store.fetch_alerts(p.conn, b["alert_ids"])
            purpose, level = b["purpose"], b["level"]
            route = p.cfg.route(b["route_id"] or "")
            live: list[dict[str, Any]] = []
            for aid in b["alert_ids"]:
                a = alerts.get(aid)
                if a is None or (
                    purpose not in ("acknowledged", "resolved", "fired_resolved")
                    and a["state"] != "firing"
                ):
                    continue  # acknowledged or resolved while waiting for companions
                s = active_silence(silences, alert_labels(a), now)
                if s is not None and route is not None:
                    await record_silenced(p, a, route, level, s.id, now, r, purpose)
                    continue
                live.append(a)
            if live and route is not None:
                await batch_to_ledger(p, b["id"], live, route, level, purpose, now, r)


async def batch_to_ledger(
    p: Pass,
    batch_id: int,
    alerts: list[dict[str, Any]],
    route: Route,
    level: int,
    purpose: str,
    now: datetime,
    r: RunReport,
) -> None:
    labels = alert_labels(alerts[0])
    rungs = (
        route.ladder[: level + 1]
        if purpose in ("acknowledged", "resolved")
        else [route.ladder[min(level, len(route.ladder) - 1)]]
    )
    groups = []
    for step in rungs:
        groups += [g for g in step_targets(step, p.cfg.contact_groups, labels) if g not in groups]
    dicts = [alert_to_contract_dict(a) for a in alerts]
    queued = 0
    for g in groups:
        msg = render_message(
            purpose=purpose,
            level=level,
            alerts=dicts,
            tier=rungs[-1].tier,
            mobiles=[m.phone for m in g.members if m.phone],
            emails=[m.email for m in g.members if m.email],
        )
        for ch in g.channels:
            cfg = p.cfg.channel(ch)
            if cfg is None or not cfg.enabled:
                continue
            await p.queue(
                now,
                r,
                batch_id=batch_id,
                alert_ids=[a["id"] for a in alerts],
                route_id=route.id,
                level=level,
                purpose=purpose,
                channel_id=ch,
                group_id=g.id,
                msg=msg,
            )
            queued += 1
    if queued == 0 and purpose in ("fired", "escalation"):
        why = f"route {route.id} level {level}: no contact group with an enabled channel"
        for a in alerts:
            await store.add_timeline(
                p.conn,
                a["id"],
                "notify_failed",
                now,
                note=why,
                data={"route": route.id, "level": level},
            )
            if level == 0:
                await p.nobody_reachable(a, now, r, why)
