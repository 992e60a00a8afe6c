"""All notifier SQL: configuration, the outbox cursor, escalation progress, batches,
the delivery ledger and log, channel health, timeline rows and system alerts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.notify.decide import Cursor, Progress, SilenceView

Conn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]
EVENTS_CHANNEL = "healthmon_alert_events"
CONFIG_CHANNEL = "healthmon_notify_config"
ACTOR = "notifier"
# Event ids below the oldest visible one that a first start still waits for.
FIRST_START_MARGIN = 1000


async def fetch_all(conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def fetch_one(
    conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> Row | None:
    rows = await fetch_all(conn, sql, params)
    return rows[0] if rows else None


# ---------------------------------------------------------------- the outbox


async def lock_cursor(conn: Conn, name: str) -> Cursor:
    """The cursor row, locked for this transaction.

    Created the first time a little below the oldest event (or the sequence, when the
    table is empty), so an event whose insert was still uncommitted at that moment is a
    gap to wait for rather than an id already passed.
    """
    await conn.execute(
        "INSERT INTO notify_cursor (name, last_event_id)"
        " SELECT %s, greatest(0, coalesce((SELECT min(id) - 1 FROM alert_events),"
        " (SELECT last_value FROM alert_events_id_seq)) - %s)"
        " ON CONFLICT (name) DO NOTHING",
        (name, FIRST_START_MARGIN),
    )
    row = await fetch_one(
        conn,
        "SELECT last_event_id, processed_above FROM notify_cursor WHERE name = %s FOR UPDATE",
        (name,),
    )
    assert row is not None
    return Cursor(int(row["last_event_id"]), frozenset(row["processed_above"]))


async def save_cursor(conn: Conn, name: str, cursor: Cursor, now: datetime) -> None:
    await conn.execute(
        "UPDATE notify_cursor SET last_event_id = %s, processed_above = %s, updated_at = %s"
        " WHERE name = %s",
        (cursor.last_id, sorted(cursor.processed_above), now, name),
    )


async def fetch_events(conn: Conn, cursor: Cursor, limit: int) -> list[Row]:
    return await fetch_all(
        conn,
        "SELECT id, alert_id, at, kind, state, data FROM alert_events"
        " WHERE id > %s AND NOT (id = ANY(%s)) ORDER BY id LIMIT %s",
        (cursor.last_id, sorted(cursor.processed_above), limit),
    )


# ---------------------------------------------------------------- alerts and progress


async def fetch_alerts(conn: Conn, ids: Iterable[UUID]) -> dict[UUID, Row]:
    rows = await fetch_all(conn, "SELECT * FROM alerts WHERE id = ANY(%s)", (list(ids),))
    return {r["id"]: r for r in rows}


async def progress_rows(conn: Conn, alert_id: UUID) -> list[Row]:
    return await fetch_all(
        conn, "SELECT * FROM notify_alert_state WHERE alert_id = %s", (alert_id,)
    )


async def open_progress(conn: Conn) -> list[Row]:
    """Open (alert, route) progress rows with their alert, locked against a second notifier."""
    return await fetch_all(
        conn,
        "SELECT s.route_id, s.level, s.first_notified_at, s.last_notified_at, s.reminders,"
        " s.silenced_by, a.* FROM notify_alert_state s JOIN alerts a ON a.id = s.alert_id"
        " WHERE NOT s.done ORDER BY a.detected_at FOR UPDATE OF s SKIP LOCKED",
    )


async def start_progress(conn: Conn, alert_id: UUID, route_id: str, now: datetime) -> bool:
    cur = await conn.execute(
        "INSERT INTO notify_alert_state (alert_id, route_id, created_at) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (alert_id, route_id, now),
    )
    return cur.rowcount == 1


async def save_progress(
    conn: Conn, alert_id: UUID, route_id: str, p: Progress, *, done: bool
) -> None:
    await conn.execute(
        "UPDATE notify_alert_state SET level = %s, first_notified_at = %s, last_notified_at = %s,"
        " reminders = %s, silenced_by = %s, done = %s WHERE alert_id = %s AND route_id = %s",
        (
            p.level,
            p.first_notified_at,
            p.last_notified_at,
            p.reminders,
            p.silenced_by,
            done,
            alert_id,
            route_id,
        ),
    )


async def mark_silenced(conn: Conn, alert_id: UUID, route_id: str, silence_id: UUID) -> None:
    await conn.execute(
        "UPDATE notify_alert_state SET silenced_by = %s WHERE alert_id = %s AND route_id = %s",
        (silence_id, alert_id, route_id),
    )


def progress_of(row: Row) -> Progress:
    return Progress(
        level=row["level"],
        first_notified_at=row["first_notified_at"],
        last_notified_at=row["last_notified_at"],
        reminders=row["reminders"],
        silenced_by=row["silenced_by"],
    )


async def active_silences(conn: Conn, now: datetime) -> list[SilenceView]:
    rows = await fetch_all(
        conn,
        "SELECT id, matchers, starts_at, ends_at FROM silences"
        " WHERE starts_at <= %s AND ends_at > %s",
        (now, now),
    )
    return [SilenceView(r["id"], r["matchers"], r["starts_at"], r["ends_at"]) for r in rows]


async def silence_info(conn: Conn, silence_id: UUID) -> Row:
    row = await fetch_one(
        conn, "SELECT owner, reason, ends_at FROM silences WHERE id = %s", (silence_id,)
    )
    return row or {}


# ---------------------------------------------------------------- batches


async def add_to_batch(
    conn: Conn,
    *,
    key: str,
    route_id: str | None,
    level: int,
    purpose: str,
    alert_id: UUID,
    due_at: datetime,
    now: datetime,
) -> None:
    """Join the open batch of this key, or open one due at `due_at`."""
    await conn.execute(
        "INSERT INTO notify_batches"
        " (group_key, route_id, level, purpose, alert_ids, due_at, created_at)"
        " VALUES (%s, %s, %s, %s, ARRAY[%s::uuid], %s, %s)"
        " ON CONFLICT (group_key) WHERE flushed_at IS NULL DO UPDATE"
        " SET alert_ids = CASE WHEN %s::uuid = ANY(notify_batches.alert_ids)"
        " THEN notify_batches.alert_ids ELSE notify_batches.alert_ids || %s::uuid END",
        (key, route_id, level, purpose, alert_id, due_at, now, alert_id, alert_id),
    )


async def due_batches(conn: Conn, now: datetime) -> list[Row]:
    return await fetch_all(
        conn,
        "SELECT * FROM notify_batches WHERE flushed_at IS NULL AND due_at <= %s"
        " ORDER BY due_at FOR UPDATE SKIP LOCKED",
        (now,),
    )


async def mark_flushed(conn: Conn, batch_id: int, now: datetime) -> None:
    await conn.execute("UPDATE notify_batches SET flushed_at = %s WHERE id = %s", (now, batch_id))


# ---------------------------------------------------------------- the ledger


async def insert_notification(
    conn: Conn,
    *,
    batch_id: int | None,
    alert_ids: Sequence[UUID],
    route_id: str | None,
    level: int,
    purpose: str,
    channel_id: str | None,
    group_id: str | None,
    state: str,
    message: dict[str, Any],
    max_attempts: int,
    now: datetime,
    silence_id: UUID | None = None,
    fallback_of: int | None = None,
    last_error: str | None = None,
) -> int:
    row = await fetch_one(
        conn,
        "INSERT INTO notifications (batch_id, alert_ids, route_id, level, purpose, channel_id,"
        " group_id, state, silence_id, message, max_attempts, next_attempt_at, fallback_of,"
        " last_error, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            batch_id,
            list(alert_ids),
            route_id,
            level,
            purpose,
            channel_id,
            group_id,
            state,
            silence_id,
            Jsonb(message),
            max_attempts,
            now if state == "queued" else None,
            fallback_of,
            last_error,
            now,
            now,
        ),
    )
    assert row is not None
    return int(row["id"])


async def claim_due(conn: Conn, now: datetime, limit: int) -> list[Row]:
    """Queued notifications due at `now`, moved to `sent` (one more attempt) and committed
    before anything is sent, so a crash mid-send is visible as `sent`."""
    async with conn.transaction():
        return await fetch_all(
            conn,
            "UPDATE notifications SET state = 'sent', attempts = attempts + 1, updated_at = %s"
            " WHERE id IN (SELECT id FROM notifications WHERE state = 'queued'"
            " AND next_attempt_at <= %s ORDER BY next_attempt_at, id LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING *",
            (now, now, limit),
        )


async def requeue_stale_sent(conn: Conn) -> int:
    """At start: a `sent` row is one whose outcome a crash lost; send it again
    (at-least-once), due from when it was claimed, unless it has used up its attempts."""
    cur = await conn.execute(
        "UPDATE notifications SET state = CASE WHEN attempts < max_attempts THEN 'queued'"
        " ELSE 'failed' END, next_attempt_at = CASE WHEN attempts < max_attempts"
        " THEN updated_at END, last_error = 'outcome lost (restart)'"
        " WHERE state = 'sent'",
    )
    return cur.rowcount


async def record_attempt(
    conn: Conn,
    *,
    notification_id: int,
    attempt: int,
    now: datetime,
    ok: bool,
    status_code: int | None,
    error: str,
    duration_ms: float,
) -> None:
    await conn.execute(
        "INSERT INTO notification_attempts (notification_id, attempt, at, ok, status_code, error,"
        " duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (notification_id, attempt, now, ok, status_code, error, duration_ms),
    )


async def set_state(
    conn: Conn,
    notification_id: int,
    state: str,
    now: datetime,
    *,
    next_attempt_at: datetime | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE notifications SET state = %s, next_attempt_at = %s,"
        " last_error = coalesce(%s, last_error), updated_at = %s WHERE id = %s",
        (state, next_attempt_at, error, now, notification_id),
    )


async def fallback_chain(conn: Conn, notification_id: int) -> list[str]:
    """Channel ids already tried for this message (the row and its fallback ancestors)."""
    rows = await fetch_all(
        conn,
        "WITH RECURSIVE chain AS (SELECT id, channel_id, fallback_of FROM notifications"
        " WHERE id = %s UNION ALL SELECT n.id, n.channel_id, n.fallback_of FROM notifications n"
        " JOIN chain c ON n.id = c.fallback_of) SELECT channel_id FROM chain",
        (notification_id,),
    )
    return [r["channel_id"] for r in rows if r["channel_id"]]


async def batch_still_reachable(conn: Conn, batch_id: int) -> bool:
    """True while some notification of the batch was accepted or may still be."""
    row = await fetch_one(
        conn,
        "SELECT count(*) AS n FROM notifications WHERE batch_id = %s"
        " AND state IN ('queued', 'sent', 'accepted')",
        (batch_id,),
    )
    return bool(row and row["n"])


async def next_times(conn: Conn) -> list[datetime]:
    row = await fetch_one(
        conn,
        "SELECT (SELECT min(next_attempt_at) FROM notifications WHERE state = 'queued') AS n,"
        " (SELECT min(due_at) FROM notify_batches WHERE flushed_at IS NULL) AS b",
    )
    return [t for t in (row or {}).values() if t is not None]


# ---------------------------------------------------------------- channel health


async def channel_failed(conn: Conn, channel_id: str, error: str, now: datetime) -> int:
    row = await fetch_one(
        conn,
        "INSERT INTO notify_channel_health (channel_id, consecutive_failures, last_error,"
        " last_failure_at) VALUES (%s, 1, %s, %s) ON CONFLICT (channel_id) DO UPDATE"
        " SET consecutive_failures = notify_channel_health.consecutive_failures + 1,"
        " last_error = EXCLUDED.last_error, last_failure_at = EXCLUDED.last_failure_at"
        " RETURNING consecutive_failures",
        (channel_id, error[:500], now),
    )
    return int(row["consecutive_failures"]) if row else 1


async def channel_succeeded(conn: Conn, channel_id: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO notify_channel_health (channel_id, consecutive_failures, last_success_at)"
        " VALUES (%s, 0, %s) ON CONFLICT (channel_id) DO UPDATE"
        " SET consecutive_failures = 0, last_success_at = EXCLUDED.last_success_at",
        (channel_id, now),
    )


# ---------------------------------------------------------------- timeline and system alerts


async def add_timeline(
    conn: Conn,
    alert_id: UUID,
    kind: str,
    now: datetime,
    *,
    note: str = "",
    data: dict[str, Any] | None = None,
    state: str | None = None,
) -> None:
    """A step on the alert's timeline; NOTIFY so the SSE stream shows it at once."""
    row = await fetch_one(
        conn,
        "INSERT INTO alert_events (alert_id, at, kind, state, actor, note, data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            alert_id,
            now,
            kind,
            state,
            ACTOR,
            note,
            Jsonb(json.loads(json.dumps(data or {}, default=str))),
        ),
    )
    assert row is not None
    # Announced at commit, with the event id, as the engine's rows are.
    await conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, str(row["id"])))


async def raise_system_alert(
    conn: Conn,
    *,
    rule_id: str,
    subject: str,
    severity: str,
    message: str,
    now: datetime,
    site_id: str | None = None,
    region: str | None = None,
    data: dict[str, Any] | None = None,
) -> UUID | None:
    """Open a `system` alert unless one is open for this rule and subject (the partial
    unique index decides); returns its id when a new one was opened."""
    row = await fetch_one(
        conn,
        "INSERT INTO alerts (rule_id, subject, site_id, region, kind, severity, state,"
        " started_at, detected_at, message, updated_at)"
        " VALUES (%s, %s, %s, %s, 'system', %s, 'firing', %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (rule_id, subject, site_id, region, severity, now, now, message, now),
    )
    if row is None:
        return None
    await add_timeline(conn, row["id"], "fired", now, note=message, data=data, state="firing")
    return UUID(str(row["id"]))


async def resolve_system_alert(
    conn: Conn, *, rule_id: str, subject: str, now: datetime, note: str
) -> None:
    row = await fetch_one(
        conn,
        "UPDATE alerts SET state = 'resolved', resolved_at = %s, resolved_by = %s, updated_at = %s"
        " WHERE rule_id = %s AND subject = %s AND state <> 'resolved' RETURNING id",
        (now, ACTOR, now, rule_id, subject),
    )
    if row is not None:
        await add_timeline(conn, row["id"], "resolved", now, note=note, state="resolved")
