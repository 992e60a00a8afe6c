"""The API's SQL (everything but readings history, which is in `api/history.py`).

Every query is parameterised. `regions` parameters are `None` for an unrestricted caller
or the list of regions a region-limited key may see; the filter is in SQL so a limited key
never even reads rows outside its regions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[DictRow]
Row = dict[str, Any]

_REGION_OK = "(%(regions)s::text[] IS NULL OR {col} = ANY(%(regions)s::text[]))"


def _region_ok(col: str) -> str:
    return _REGION_OK.format(col=col)


async def _one(conn: Conn, query: str, params: dict[str, Any]) -> Row | None:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchone()


async def _all(conn: Conn, query: str, params: dict[str, Any]) -> list[Row]:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchall()


# --- keys and users -----------------------------------------------------------------------


async def get_api_key(conn: Conn, key_id: str) -> Row | None:
    return await _one(conn, "SELECT * FROM api_keys WHERE key_id = %(k)s", {"k": key_id})


async def insert_api_key(
    conn: Conn, key_id: str, secret_hash: str, role: str, regions: list[str], name: str
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, role, regions, name)"
        " VALUES (%s, %s, %s, %s, %s)",
        (key_id, secret_hash, role, regions, name),
    )


async def list_api_keys(conn: Conn) -> list[Row]:
    return await _all(
        conn,
        "SELECT key_id, name, role, regions, created_at, revoked_at FROM api_keys"
        " ORDER BY created_at",
        {},
    )


async def revoke_api_key(conn: Conn, key_id: str) -> bool:
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
        (key_id,),
    )
    return cur.rowcount == 1


async def get_user(conn: Conn, username: str) -> Row | None:
    return await _one(conn, "SELECT * FROM users WHERE username = %(u)s", {"u": username})


async def upsert_user(
    conn: Conn, username: str, password_hash: str, role: str, regions: list[str]
) -> None:
    await conn.execute(
        "INSERT INTO users (username, password_hash, role, regions) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
        " role = EXCLUDED.role, regions = EXCLUDED.regions, disabled = false,"
        " session_epoch = users.session_epoch + 1, updated_at = now()",
        (username, password_hash, role, regions),
    )


async def bump_session_epoch(conn: Conn, username: str) -> None:
    await conn.execute(
        "UPDATE users SET session_epoch = session_epoch + 1 WHERE username = %s", (username,)
    )


# --- sites --------------------------------------------------------------------------------


async def list_sites(
    conn: Conn, *, regions: list[str] | None, region: str | None, after: str | None, limit: int
) -> list[Row]:
    return await _all(
        conn,
        "SELECT * FROM sites WHERE "
        + _region_ok("region")
        + " AND (%(region)s::text IS NULL OR region = %(region)s)"
        " AND (%(after)s::text IS NULL OR site_id > %(after)s)"
        " ORDER BY site_id LIMIT %(limit)s",
        {"regions": regions, "region": region, "after": after, "limit": limit},
    )


async def get_site(conn: Conn, site_id: str, regions: list[str] | None) -> Row | None:
    return await _one(
        conn,
        "SELECT * FROM sites WHERE site_id = %(id)s AND " + _region_ok("region"),
        {"id": site_id, "regions": regions},
    )


async def insert_site(conn: Conn, values: dict[str, Any]) -> Row | None:
    """None when the site id is taken."""
    return await _one(
        conn,
        "INSERT INTO sites (site_id, name, kind, region, address)"
        " VALUES (%(site_id)s, %(name)s, %(kind)s, %(region)s, %(address)s)"
        " ON CONFLICT (site_id) DO NOTHING RETURNING *",
        values,
    )


async def update_site(conn: Conn, site_id: str, changes: dict[str, Any]) -> Row | None:
    params = {"id": site_id, **{f"v_{k}": v for k, v in changes.items()}}
    sets = "".join(f", {col} = %(v_{col})s" for col in changes)  # columns from our model
    return await _one(
        conn,
        f"UPDATE sites SET updated_at = now(){sets} WHERE site_id = %(id)s RETURNING *",
        params,
    )


# --- devices ------------------------------------------------------------------------------

_DEVICE_COLS = (
    "d.device_id, d.domain, d.site_id, s.region, d.profile, d.expected_interval_s, d.name,"
    " d.enabled, d.auto_registered, d.online, d.status_changed_at, d.last_seen,"
    " d.created_at, d.updated_at"
)
_DEVICE_FROM = " FROM devices d LEFT JOIN sites s ON s.site_id = d.site_id"


async def list_devices(
    conn: Conn,
    *,
    regions: list[str] | None,
    filters: dict[str, Any],
    after: str | None,
    limit: int,
) -> list[Row]:
    return await _all(
        conn,
        "SELECT "
        + _DEVICE_COLS
        + _DEVICE_FROM
        + " WHERE "
        + _region_ok("s.region")
        + " AND (%(domain)s::text IS NULL OR d.domain = %(domain)s)"
        " AND (%(site_id)s::text IS NULL OR d.site_id = %(site_id)s)"
        " AND (%(region)s::text IS NULL OR s.region = %(region)s)"
        " AND (%(online)s::boolean IS NULL OR d.online IS NOT DISTINCT FROM %(online)s)"
        " AND (%(after)s::text IS NULL OR d.device_id > %(after)s)"
        " ORDER BY d.device_id LIMIT %(limit)s",
        {"regions": regions, "after": after, "limit": limit, **filters},
    )


async def get_device(conn: Conn, device_id: str, regions: list[str] | None) -> Row | None:
    return await _one(
        conn,
        "SELECT "
        + _DEVICE_COLS
        + _DEVICE_FROM
        + " WHERE d.device_id = %(id)s AND "
        + _region_ok("s.region"),
        {"id": device_id, "regions": regions},
    )


async def insert_device(conn: Conn, values: dict[str, Any], password_hash: str) -> bool:
    cur = await conn.execute(
        "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s, name,"
        " enabled, mqtt_password_hash) VALUES (%(device_id)s, %(domain)s, %(site_id)s,"
        " %(profile)s, %(expected_interval_s)s, %(name)s, %(enabled)s, %(hash)s)"
        " ON CONFLICT (device_id) DO NOTHING",
        {**values, "hash": password_hash},
    )
    return cur.rowcount == 1


async def update_device(conn: Conn, device_id: str, changes: dict[str, Any]) -> bool:
    params = {"id": device_id, **{f"v_{k}": v for k, v in changes.items()}}
    sets = "".join(f", {col} = %(v_{col})s" for col in changes)  # columns from our model
    cur = await conn.execute(
        f"UPDATE devices SET updated_at = now(){sets} WHERE device_id = %(id)s".encode(), params
    )
    return cur.rowcount == 1


async def delete_device(conn: Conn, device_id: str) -> bool:
    await conn.execute("DELETE FROM latest_readings WHERE device_id = %s", (device_id,))
    cur = await conn.execute("DELETE FROM devices WHERE device_id = %s", (device_id,))
    return cur.rowcount == 1


async def latest_readings(conn: Conn, device_id: str) -> list[Row]:
    return await _all(
        conn,
        "SELECT metric, ts, value, received_at FROM latest_readings"
        " WHERE device_id = %(id)s ORDER BY metric",
        {"id": device_id},
    )


async def latest_for_devices(conn: Conn, device_ids: list[str]) -> list[Row]:
    return await _all(
        conn,
        "SELECT device_id, metric, ts, value, received_at FROM latest_readings"
        " WHERE device_id = ANY(%(ids)s::text[]) ORDER BY device_id, metric",
        {"ids": device_ids},
    )


# --- alerts -------------------------------------------------------------------------------


async def list_alerts(
    conn: Conn,
    *,
    regions: list[str] | None,
    filters: dict[str, Any],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Row]:
    """Newest episode first; keyset on (started_at, id) descending."""
    return await _all(
        conn,
        "SELECT * FROM alerts WHERE "
        + _region_ok("region")
        + " AND (%(state)s::text[] IS NULL OR state = ANY(%(state)s::text[]))"
        " AND (%(severity)s::text[] IS NULL OR severity = ANY(%(severity)s::text[]))"
        " AND (%(domain)s::text IS NULL OR domain = %(domain)s)"
        " AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)"
        " AND (%(site_id)s::text IS NULL OR site_id = %(site_id)s)"
        " AND (%(region)s::text IS NULL OR region = %(region)s)"
        " AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s"
        "      OR updated_at >= %(since)s)"
        " AND (%(a_ts)s::timestamptz IS NULL OR (started_at, id) < (%(a_ts)s, %(a_id)s::uuid))"
        " ORDER BY started_at DESC, id DESC LIMIT %(limit)s",
        {
            "regions": regions,
            "limit": limit,
            "a_ts": after[0] if after else None,
            "a_id": after[1] if after else None,
            **filters,
        },
    )


async def get_alert(conn: Conn, alert_id: str, regions: list[str] | None) -> Row | None:
    return await _one(
        conn,
        "SELECT * FROM alerts WHERE id = %(id)s AND " + _region_ok("region"),
        {"id": alert_id, "regions": regions},
    )


async def alert_timeline(conn: Conn, alert_id: str) -> list[Row]:
    return await _all(
        conn,
        "SELECT id, at, kind, state, actor, note, data FROM alert_events"
        " WHERE alert_id = %(id)s ORDER BY id",
        {"id": alert_id},
    )


async def alert_events_after(
    conn: Conn, after_id: int, regions: list[str] | None, limit: int
) -> list[Row]:
    """State changes (rows with a `state`) after `after_id`, with their alert, for SSE."""
    return await _all(
        conn,
        "SELECT e.id AS event_id, e.at AS event_at, e.kind AS event_kind, e.actor AS event_actor,"
        " e.note AS event_note, a.* FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " WHERE e.id > %(after)s AND e.state IS NOT NULL AND "
        + _region_ok("a.region")
        + " ORDER BY e.id LIMIT %(limit)s",
        {"after": after_id, "regions": regions, "limit": limit},
    )


async def last_alert_event_id(conn: Conn) -> int:
    row = await _one(conn, "SELECT coalesce(max(id), 0) AS id FROM alert_events", {})
    return int(row["id"]) if row else 0


# --- rules --------------------------------------------------------------------------------


async def list_rules(
    conn: Conn, *, regions: list[str] | None, after: str | None, limit: int
) -> list[Row]:
    # Global rules (region NULL) apply in every region, so a limited key sees them too.
    return await _all(
        conn,
        "SELECT * FROM rules WHERE (region IS NULL OR " + _region_ok("region") + ")"
        " AND (%(after)s::text IS NULL OR rule_id > %(after)s)"
        " ORDER BY rule_id LIMIT %(limit)s",
        {"regions": regions, "after": after, "limit": limit},
    )


async def get_rule(conn: Conn, rule_id: str, regions: list[str] | None) -> Row | None:
    return await _one(
        conn,
        "SELECT * FROM rules WHERE rule_id = %(id)s AND (region IS NULL OR "
        + _region_ok("region")
        + ")",
        {"id": rule_id, "regions": regions},
    )


async def insert_rule(
    conn: Conn, rule_id: str, body: dict[str, Any], region: str | None, enabled: bool
) -> Row | None:
    row = await _one(
        conn,
        "INSERT INTO rules (rule_id, body, region, enabled) VALUES (%(id)s, %(body)s,"
        " %(region)s, %(enabled)s) ON CONFLICT (rule_id) DO NOTHING RETURNING *",
        {"id": rule_id, "body": Jsonb(body), "region": region, "enabled": enabled},
    )
    if row is not None:
        await conn.execute("NOTIFY healthmon_rules")
    return row


async def replace_rule(
    conn: Conn, rule_id: str, body: dict[str, Any], region: str | None, enabled: bool
) -> Row | None:
    row = await _one(
        conn,
        "UPDATE rules SET body = %(body)s, region = %(region)s, enabled = %(enabled)s,"
        " version = version + 1, updated_at = now() WHERE rule_id = %(id)s RETURNING *",
        {"id": rule_id, "body": Jsonb(body), "region": region, "enabled": enabled},
    )
    if row is not None:
        await conn.execute("NOTIFY healthmon_rules")
    return row


async def delete_rule(conn: Conn, rule_id: str) -> bool:
    cur = await conn.execute("DELETE FROM rules WHERE rule_id = %s", (rule_id,))
    if cur.rowcount == 1:
        await conn.execute("DELETE FROM rule_state WHERE rule_id = %s", (rule_id,))
        await conn.execute("NOTIFY healthmon_rules")
        return True
    return False


# --- silences -----------------------------------------------------------------------------


async def list_silences(
    conn: Conn, *, regions: list[str] | None, active_at: datetime | None, limit: int
) -> list[Row]:
    return await _all(
        conn,
        "SELECT * FROM silences WHERE "
        + _region_ok("matchers->>'region'")
        + " AND (%(at)s::timestamptz IS NULL OR (starts_at <= %(at)s AND ends_at > %(at)s))"
        " ORDER BY starts_at DESC, id LIMIT %(limit)s",
        {"regions": regions, "at": active_at, "limit": limit},
    )


async def insert_silence(conn: Conn, values: dict[str, Any]) -> Row:
    row = await _one(
        conn,
        "INSERT INTO silences (matchers, starts_at, ends_at, owner, reason)"
        " VALUES (%(matchers)s, %(starts_at)s, %(ends_at)s, %(owner)s, %(reason)s) RETURNING *",
        {**values, "matchers": Jsonb(values["matchers"])},
    )
    assert row is not None
    return row


async def delete_silence(conn: Conn, silence_id: str, regions: list[str] | None) -> bool:
    cur = await conn.execute(
        (
            "DELETE FROM silences WHERE id = %(id)s AND " + _region_ok("matchers->>'region'")
        ).encode(),
        {"id": silence_id, "regions": regions},
    )
    return cur.rowcount == 1


# --- rejected -----------------------------------------------------------------------------


async def list_rejected(
    conn: Conn,
    *,
    regions: list[str] | None,
    filters: dict[str, Any],
    before_id: int | None,
    limit: int,
) -> list[Row]:
    """Newest first. A region-limited key sees only its own devices' rejections."""
    return await _all(
        conn,
        "SELECT r.* FROM rejected r"
        " LEFT JOIN devices d ON d.device_id = r.device_id"
        " LEFT JOIN sites s ON s.site_id = d.site_id"
        " WHERE "
        + _region_ok("s.region")
        + " AND (%(device_id)s::text IS NULL OR r.device_id = %(device_id)s)"
        " AND (%(reason)s::text IS NULL OR r.reason = %(reason)s)"
        " AND (%(since)s::timestamptz IS NULL OR r.received_at >= %(since)s)"
        " AND (%(before)s::bigint IS NULL OR r.id < %(before)s)"
        " ORDER BY r.id DESC LIMIT %(limit)s",
        {"regions": regions, "before": before_id, "limit": limit, **filters},
    )


# --- health and metrics -------------------------------------------------------------------


async def alert_counts(conn: Conn) -> list[Row]:
    return await _all(
        conn,
        "SELECT state, severity, count(*) AS n FROM alerts GROUP BY state, severity"
        " ORDER BY state, severity",
        {},
    )


async def notification_failures(conn: Conn) -> list[Row]:
    """Failed delivery attempts and finally failed notifications, by channel
    (the notifier's ledger, migration 0015)."""
    return await _all(
        conn,
        "SELECT coalesce(n.channel_id, '') AS channel,"
        " count(*) AS attempts,"
        " count(DISTINCT n.id) FILTER (WHERE n.state = 'failed') AS failed"
        " FROM notification_attempts a JOIN notifications n ON n.id = a.notification_id"
        " WHERE NOT a.ok GROUP BY 1 ORDER BY 1",
        {},
    )
