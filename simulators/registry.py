"""Adds a fleet's sites and devices to the registry (tables of ingest/migrations/0001)."""

from __future__ import annotations

from typing import Any

import psycopg

from simulators.fleet import Fleet

_UPSERT_SITE = """
INSERT INTO sites (site_id, name, kind, region) VALUES (%s, %s, %s, %s)
ON CONFLICT (site_id) DO UPDATE
SET name = EXCLUDED.name, kind = EXCLUDED.kind, region = EXCLUDED.region, updated_at = now()
"""
_UPSERT_DEVICE = """
INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s, name)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE
SET domain = EXCLUDED.domain, site_id = EXCLUDED.site_id, profile = EXCLUDED.profile,
    expected_interval_s = EXCLUDED.expected_interval_s, name = EXCLUDED.name,
    enabled = true, updated_at = now()
"""


def _rows(fleet: Fleet) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    sites = [(s.site_id, s.name, s.kind, s.region) for s in fleet.sites]
    devices = [
        (d.device_id, d.domain, d.site_id, d.profile, d.expected_interval_s, d.name)
        for d in fleet.specs
    ]
    return sites, devices


def register_fleet(dsn: str, fleet: Fleet) -> int:
    """Upsert the fleet's sites and devices in one transaction; returns the device count."""
    sites, devices = _rows(fleet)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(_UPSERT_SITE, sites)
        cur.executemany(_UPSERT_DEVICE, devices)
    return len(devices)


async def register_fleet_async(conn: psycopg.AsyncConnection[Any], fleet: Fleet) -> int:
    """As `register_fleet`, on an open connection, in a transaction of its own."""
    sites, devices = _rows(fleet)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(_UPSERT_SITE, sites)
        await cur.executemany(_UPSERT_DEVICE, devices)
    return len(devices)
