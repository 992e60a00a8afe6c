"""The alert engine's SQL, in one place: rules, rule state, alerts and their timeline.

Every function takes the caller's connection and runs inside the caller's transaction;
nothing here commits. `alert_events` is the outbox the notifier and the SSE stream read,
so each appended row is announced with `NOTIFY healthmon_alert_events, '<event id>'`,
which PostgreSQL delivers only when the transaction commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from alerts.actions import Escalate, Fire, Resolve
from alerts.rules import Rule, RuleBase, Scope, parse_rule

logger = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
EVENTS_CHANNEL = "healthmon_alert_events"
RULES_CHANNEL = "healthmon_rules"
_SEV_ORDER = "ARRAY['info','warning','critical']"


@dataclass(frozen=True, slots=True)
class AlertContext:
    """Where an alert belongs: copied onto the alert row for filtering and routing."""

    device_id: str | None = None
    site_id: str | None = None
    region: str | None = None
    domain: str | None = None


# ---------------------------------------------------------------- rules


async def load_rules(conn: Conn) -> list[Rule]:
    """Every enabled rule; a body that no longer validates is logged and skipped."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT rule_id, body, region, enabled FROM rules ORDER BY rule_id")
    out: list[Rule] = []
    for row in await cur.fetchall():
        if not row["enabled"]:
            continue
        try:
            rule = parse_rule({**row["body"], "rule_id": row["rule_id"]})
        except ValidationError as exc:
            logger.error("rule %s is invalid and skipped: %s", row["rule_id"], exc)
            continue
        if row["region"] and rule.scope.region is None:
            scope = Scope.model_validate({**rule.scope.model_dump(), "region": row["region"]})
            rule = rule.model_copy(update={"scope": scope})
        out.append(rule)
    return out


async def upsert_rules(conn: Conn, rules: Iterable[RuleBase], *, builtin: bool = True) -> int:
    """Insert or update `rules`; a row someone edited (builtin false) is left alone when
    loading the built-in packs. Announces the change on `healthmon_rules`."""
    n = 0
    for rule in rules:
        body = rule.model_dump(mode="json")
        cur = await conn.execute(
            "INSERT INTO rules (rule_id, body, region, enabled, builtin)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (rule_id) DO UPDATE SET body = EXCLUDED.body,"
            " region = EXCLUDED.region, version = rules.version + 1, updated_at = now()"
            " WHERE (rules.builtin OR NOT EXCLUDED.builtin)"
            " AND rules.body IS DISTINCT FROM EXCLUDED.body",
            (rule.rule_id, Jsonb(body), rule.scope.region, rule.enabled, builtin),
        )
        n += cur.rowcount
    await conn.execute("SELECT pg_notify(%s, 'reload')", (RULES_CHANNEL,))
    return n


async def rules_empty(conn: Conn) -> bool:
    cur = await conn.execute("SELECT NOT EXISTS (SELECT 1 FROM rules)")
    row = await cur.fetchone()
    return bool(row and row[0])


async def rule_body(conn: Conn, rule_id: str) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT body FROM rules WHERE rule_id = %s", (rule_id,))
    row = await cur.fetchone()
    return None if row is None else dict(row[0])


# ---------------------------------------------------------------- locks and state


async def lock_subjects(conn: Conn, subjects: Iterable[str]) -> None:
    """Transaction-scoped advisory locks, one per subject, taken in sorted order so two
    workers locking overlapping sets cannot deadlock."""
    keys = sorted(set(subjects))
    if keys:
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))"
            " FROM (SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) AS s",
            (keys,),
        )


async def load_states(
    conn: Conn, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    return {k: v[0] for k, v in (await load_state_rows(conn, keys)).items()}


async def load_state_rows(
    conn: Conn, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[dict[str, Any], datetime | None]]:
    """(state, due_at) of each key that has a row (decoded with orjson: the engine reads
    a few per device on every batch)."""
    if not keys:
        return {}
    cur = await conn.execute(
        "SELECT s.rule_id, s.subject, s.state::text, s.due_at FROM rule_state s"
        " JOIN unnest(%s::text[], %s::text[]) AS k(rule_id, subject)"
        " ON s.rule_id = k.rule_id AND s.subject = k.subject",
        ([k[0] for k in keys], [k[1] for k in keys]),
    )
    return {(r[0], r[1]): (orjson.loads(r[2]), r[3]) for r in await cur.fetchall()}


def dump_state(state: dict[str, Any]) -> str:
    """Canonical JSON of a rule state (sorted keys): equal states give equal text."""
    return orjson.dumps(state, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


async def save_states(
    conn: Conn,
    rows: Sequence[tuple[str, str, dict[str, Any] | str, datetime | None]],
    now: datetime,
) -> None:
    """Upsert rule states in one statement (one JSON document of all of them: cheaper to
    send than arrays); a state may be given already dumped."""
    if not rows:
        return
    unique = {
        (r, s): (st if isinstance(st, str) else dump_state(st), due) for r, s, st, due in rows
    }
    doc = orjson.dumps(
        [{"r": k[0], "s": k[1], "st": orjson.Fragment(v[0]), "d": v[1]} for k, v in unique.items()]
    ).decode()
    await conn.execute(
        "INSERT INTO rule_state (rule_id, subject, state, due_at, updated_at)"
        " SELECT x.r, x.s, x.st, x.d, %s"
        " FROM jsonb_to_recordset(%s::jsonb) AS x(r text, s text, st jsonb, d timestamptz)"
        " ON CONFLICT (rule_id, subject) DO UPDATE"
        " SET state = EXCLUDED.state, due_at = EXCLUDED.due_at,"
        " updated_at = EXCLUDED.updated_at",
        (now, doc),
    )


async def due_states(conn: Conn, now: datetime, limit: int) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT rule_id, subject FROM rule_state WHERE due_at <= %s ORDER BY due_at LIMIT %s",
        (now, limit),
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def delete_states(conn: Conn, keys: Sequence[tuple[str, str]]) -> None:
    if keys:
        await conn.execute(
            "DELETE FROM rule_state s USING unnest(%s::text[], %s::text[]) AS k(rule_id, subject)"
            " WHERE s.rule_id = k.rule_id AND s.subject = k.subject",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )


async def forget_finished_bags(conn: Conn, before: datetime) -> int:
    """Drop the state of bags whose story ended (collected, nothing open) long ago."""
    cur = await conn.execute(
        "DELETE FROM rule_state WHERE subject LIKE 'bag:%%' AND due_at IS NULL"
        " AND updated_at < %s AND NOT coalesce((state->>'active')::boolean, false)",
        (before,),
    )
    return cur.rowcount


async def history(
    conn: Conn, device_id: str, metric: str, start: datetime, end: datetime, limit: int = 50_000
) -> list[tuple[datetime, float | None]]:
    """Stored readings of one device and metric in [start, end], by event time."""
    cur = await conn.execute(
        "SELECT ts, value FROM readings WHERE device_id = %s AND metric = %s"
        " AND ts >= %s AND ts <= %s ORDER BY ts LIMIT %s",
        (device_id, metric, start, end, limit),
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


# ---------------------------------------------------------------- devices and sites


async def device_rows(conn: Conn, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Registry rows (with the site's region) for `device_ids`."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT d.device_id, d.domain, d.site_id, s.region, d.profile,"
        " d.expected_interval_s, d.enabled, d.last_seen"
        " FROM devices d LEFT JOIN sites s ON s.site_id = d.site_id"
        " WHERE d.device_id = ANY(%s)",
        (ids,),
    )
    return {r["device_id"]: r for r in await cur.fetchall()}


async def site_members(conn: Conn, site_id: str, rule_id: str) -> list[dict[str, Any]]:
    """Enabled devices of a site with their no-data state (`state` None: never evaluated)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT d.device_id, d.profile, d.expected_interval_s, d.last_seen, rs.state"
        " FROM devices d LEFT JOIN rule_state rs"
        " ON rs.rule_id = %s AND rs.subject = 'device:' || d.device_id"
        " WHERE d.site_id = %s AND d.enabled ORDER BY d.device_id",
        (rule_id, site_id),
    )
    return list(await cur.fetchall())


async def site_region(conn: Conn, site_id: str) -> str | None:
    cur = await conn.execute("SELECT region FROM sites WHERE site_id = %s", (site_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


# ---------------------------------------------------------------- alerts


async def append_event(
    conn: Conn,
    alert_id: UUID,
    kind: str,
    state: str | None,
    now: datetime,
    *,
    actor: str | None = None,
    note: str | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """One timeline row, announced to the outbox readers at commit."""
    cur = await conn.execute(
        "INSERT INTO alert_events (alert_id, at, kind, state, actor, note, data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (alert_id, now, kind, state, actor, note, Jsonb(data or {})),
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, str(row[0])))
    return int(row[0])


async def open_alert(
    conn: Conn,
    rule: RuleBase,
    subject: str,
    ctx: AlertContext,
    fire: Fire,
    now: datetime,
    *,
    retrospective: bool,
    suppressed_by: UUID | None = None,
) -> tuple[UUID | None, bool]:
    """Open an episode; (id, True) when opened, (id of the open one, False) when one is
    already open for this rule and subject, (None, False) when this very episode (same
    start) was recorded and resolved before: a replay. The unique indexes decide, so two
    workers racing here end with one alert."""
    cur = await conn.execute(
        "INSERT INTO alerts (rule_id, subject, device_id, site_id, region, domain, metric,"
        " kind, severity, state, started_at, detected_at, retrospective, value, threshold,"
        " message, standard, suppressed_by, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'firing', %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s) ON CONFLICT DO NOTHING RETURNING id",
        (
            rule.rule_id, subject, ctx.device_id, ctx.site_id, ctx.region, ctx.domain,
            fire.metric, rule.alert_kind, fire.severity, fire.started_at, now, retrospective,
            fire.value, fire.threshold, fire.message, rule.standard, suppressed_by, now,
        ),
    )  # fmt: skip
    row = await cur.fetchone()
    if row is not None:
        data = {
            "started_at": fire.started_at.isoformat(),
            "severity": fire.severity,
            "retrospective": retrospective,
            "value": fire.value,
            "threshold": fire.threshold,
        }
        if suppressed_by is not None:
            data["suppressed_by"] = str(suppressed_by)
        await append_event(conn, row[0], "fired", "firing", now, note=fire.message, data=data)
        return row[0], True
    existing = await open_alert_id(conn, rule.rule_id, subject)
    return existing, False


async def record_past_episode(
    conn: Conn,
    rule: RuleBase,
    subject: str,
    ctx: AlertContext,
    fire: Fire,
    severity: str,
    ended_at: datetime,
    now: datetime,
) -> UUID | None:
    """Record an episode found in late data that began and ended in the past, as a
    resolved retrospective alert, unless an alert of this rule and subject already
    covers any of its time. Never touches the open episode."""
    cur = await conn.execute(
        "INSERT INTO alerts (rule_id, subject, device_id, site_id, region, domain, metric,"
        " kind, severity, state, started_at, detected_at, retrospective, resolved_at,"
        " resolved_by, value, threshold, message, standard, updated_at)"
        " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, 'resolved', %s, %s, true, %s, 'system',"
        " %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE rule_id = %s"
        " AND subject = %s AND started_at <= %s AND coalesce(resolved_at, 'infinity') >= %s)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (
            rule.rule_id, subject, ctx.device_id, ctx.site_id, ctx.region, ctx.domain,
            fire.metric, rule.alert_kind, severity, fire.started_at, now, ended_at,
            fire.value, fire.threshold, fire.message, rule.standard, now,
            rule.rule_id, subject, ended_at, fire.started_at,
        ),
    )  # fmt: skip
    row = await cur.fetchone()
    if row is None:
        return None
    data = {"started_at": fire.started_at.isoformat(), "severity": severity,
            "retrospective": True, "value": fire.value, "threshold": fire.threshold}  # fmt: skip
    await append_event(conn, row[0], "fired", "firing", now, note=fire.message, data=data)
    await append_event(conn, row[0], "resolved", "resolved", now, note="episode found in late data",
                       data={"resolved_at": ended_at.isoformat()})  # fmt: skip
    return row[0]  # type: ignore[no-any-return]


async def open_alert_id(conn: Conn, rule_id: str, subject: str) -> UUID | None:
    cur = await conn.execute(
        "SELECT id FROM alerts WHERE rule_id = %s AND subject = %s AND state <> 'resolved'",
        (rule_id, subject),
    )
    row = await cur.fetchone()
    return None if row is None else row[0]


async def escalate_alert(
    conn: Conn, rule_id: str, subject: str, esc: Escalate, now: datetime
) -> UUID | None:
    """Raise the open episode's severity (never lowers it)."""
    cur = await conn.execute(
        "UPDATE alerts SET severity = %s, updated_at = %s"
        " WHERE rule_id = %s AND subject = %s AND state <> 'resolved'"
        f" AND array_position({_SEV_ORDER}, severity) < array_position({_SEV_ORDER}, %s::text)"
        " RETURNING id, state",
        (esc.severity, now, rule_id, subject, esc.severity),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    data = {"severity": esc.severity, "at": esc.at.isoformat(), "value": esc.value}
    await append_event(conn, row[0], "escalated", row[1], now, note=esc.reason, data=data)
    return row[0]  # type: ignore[no-any-return]


async def resolve_alert(
    conn: Conn, rule_id: str, subject: str, res: Resolve, now: datetime
) -> UUID | None:
    """Resolve the open episode because its condition cleared."""
    cur = await conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = greatest(%s, started_at),"
        " resolved_by = 'system', updated_at = %s"
        " WHERE rule_id = %s AND subject = %s AND state <> 'resolved' RETURNING id",
        (res.at, now, rule_id, subject),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    data = {"resolved_at": res.at.isoformat(), "value": res.value}
    await append_event(conn, row[0], "resolved", "resolved", now, note=res.reason, data=data)
    return row[0]  # type: ignore[no-any-return]


async def suppress_open(
    conn: Conn, rule_id: str, site_id: str, site_alert: UUID, now: datetime
) -> int:
    """Hold the site's open offline alerts back under its site alert."""
    cur = await conn.execute(
        "UPDATE alerts SET suppressed_by = %s, updated_at = %s WHERE rule_id = %s"
        " AND site_id = %s AND state <> 'resolved' AND suppressed_by IS NULL",
        (site_alert, now, rule_id, site_id),
    )
    return cur.rowcount


async def release_suppressed(conn: Conn, site_alert: UUID, now: datetime) -> list[UUID]:
    """The site is back (in part): alerts still open stand on their own again."""
    cur = await conn.execute(
        "UPDATE alerts SET suppressed_by = NULL, updated_at = %s"
        " WHERE suppressed_by = %s AND state <> 'resolved' RETURNING id, state",
        (now, site_alert),
    )
    rows = await cur.fetchall()
    for aid, state in rows:
        await append_event(
            conn, aid, "released", state, now, note="site alert resolved; no longer held back",
            data={"site_alert": str(site_alert)},
        )  # fmt: skip
    return [r[0] for r in rows]


async def open_site_alerts(conn: Conn, rule_id: str) -> list[tuple[UUID, str]]:
    cur = await conn.execute(
        "SELECT id, site_id FROM alerts WHERE rule_id = %s AND state <> 'resolved'",
        (rule_id,),
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def fetch_alert(
    conn: Conn, alert_id: UUID | str, *, lock: bool = False
) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT * FROM alerts WHERE id = %s" + (" FOR UPDATE" if lock else ""), (alert_id,)
    )
    return await cur.fetchone()


async def fetch_timeline(conn: Conn, alert_id: UUID | str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT id, at, kind, state, actor, note, data FROM alert_events"
        " WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    )
    return list(await cur.fetchall())
