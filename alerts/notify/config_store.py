"""SQL of the notification configuration: store a loaded file, read it back."""

from __future__ import annotations

from datetime import datetime

from psycopg.types.json import Jsonb

from alerts.notify.config import NotifyConfig
from alerts.notify.store import CONFIG_CHANNEL, Conn, fetch_all, fetch_one


async def save_config(conn: Conn, cfg: NotifyConfig, *, now: datetime) -> str:
    """Replace the stored configuration in one transaction; returns the new version."""
    version = now.isoformat()
    async with conn.transaction():
        await conn.execute("LOCK TABLE notify_settings IN EXCLUSIVE MODE")
        for table in ("notify_routes", "notify_contact_groups", "notify_channels"):
            await conn.execute(f"DELETE FROM {table}")
        for c in cfg.channels:
            await conn.execute(
                "INSERT INTO notify_channels"
                " (channel_id, type, config, fallback, enabled, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (c.id, c.type, Jsonb(c.settings_json()), c.fallback, c.enabled, now),
            )
        for g in cfg.contact_groups:
            await conn.execute(
                "INSERT INTO notify_contact_groups"
                " (group_id, name, tier, match, channels, members, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    g.id,
                    g.name,
                    g.tier,
                    Jsonb(g.match),
                    g.channels,
                    Jsonb([m.model_dump(exclude_none=True) for m in g.members]),
                    now,
                ),
            )
        for pos, r in enumerate(cfg.routes):
            await conn.execute(
                "INSERT INTO notify_routes (route_id, position, match, ladder, reminder_every_s,"
                " max_reminders, group_wait_s, continue_matching, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    r.id,
                    pos,
                    Jsonb(r.match),
                    Jsonb([s.model_dump() for s in r.ladder]),
                    r.reminder_every_s,
                    r.max_reminders,
                    r.group_wait_s,
                    r.continue_matching,
                    now,
                ),
            )
        for key, value in (("delivery", cfg.delivery.model_dump()), ("version", version)):
            await conn.execute(
                "INSERT INTO notify_settings (key, value, updated_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE"
                " SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                (key, Jsonb(value), now),
            )
        await conn.execute("SELECT pg_notify(%s, %s)", (CONFIG_CHANNEL, version))
    return version


async def config_version(conn: Conn) -> str | None:
    row = await fetch_one(conn, "SELECT value FROM notify_settings WHERE key = 'version'")
    return None if row is None else str(row["value"])


async def load_config(conn: Conn) -> tuple[str | None, NotifyConfig]:
    """The stored configuration and its version (an empty one when nothing was loaded)."""
    version = await config_version(conn)
    channels = [
        {
            "id": r["channel_id"],
            "type": r["type"],
            "fallback": r["fallback"],
            "enabled": r["enabled"],
            **r["config"],
        }
        for r in await fetch_all(conn, "SELECT * FROM notify_channels ORDER BY channel_id")
    ]
    groups = [
        {
            "id": r["group_id"],
            "name": r["name"],
            "tier": r["tier"],
            "match": r["match"],
            "channels": r["channels"],
            "members": r["members"],
        }
        for r in await fetch_all(conn, "SELECT * FROM notify_contact_groups ORDER BY group_id")
    ]
    routes = [
        {
            "id": r["route_id"],
            "match": r["match"],
            "ladder": r["ladder"],
            "reminder_every_s": r["reminder_every_s"],
            "max_reminders": r["max_reminders"],
            "group_wait_s": r["group_wait_s"],
            "continue": r["continue_matching"],
        }
        for r in await fetch_all(conn, "SELECT * FROM notify_routes ORDER BY position")
    ]
    row = await fetch_one(conn, "SELECT value FROM notify_settings WHERE key = 'delivery'")
    data = {"channels": channels, "contact_groups": groups, "routes": routes}
    if row is not None:
        data["delivery"] = row["value"]
    return version, NotifyConfig.model_validate(data)
