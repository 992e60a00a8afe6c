"""The device registry as the intake sees it: an in-memory copy of `devices`.

Loaded whole at start, refreshed by `updated_at`, and looked up in the database on
a miss (at most once per `miss_ttl_s` per unknown id, so a flood from an
unregistered device does not become a flood of queries).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ingest.catalogue import DOMAINS
from ingest.model import DeviceInfo

logger = logging.getLogger(__name__)

_SELECT = (
    "SELECT d.device_id, d.domain, d.site_id, s.region, d.profile, d.expected_interval_s,"
    " d.enabled, greatest(d.updated_at, s.updated_at) AS changed"
    " FROM devices d LEFT JOIN sites s ON s.site_id = d.site_id"
)


def _info(row: dict[str, object]) -> DeviceInfo:
    return DeviceInfo(
        device_id=str(row["device_id"]),
        domain=str(row["domain"]),
        site_id=row["site_id"],  # type: ignore[arg-type]
        region=row["region"],  # type: ignore[arg-type]
        profile=str(row["profile"] or ""),
        expected_interval_s=int(row["expected_interval_s"]),  # type: ignore[call-overload]
        enabled=bool(row["enabled"]),
    )


class Registry:
    """Device lookups for the intake. Methods that touch the database take a connection."""

    def __init__(self, *, miss_ttl_s: float = 10.0) -> None:
        self._devices: dict[str, DeviceInfo] = {}
        self._misses: dict[str, float] = {}
        self._miss_ttl_s = miss_ttl_s
        self._watermark: datetime | None = None

    def get(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def needs_fetch(self, device_id: str, now_mono: float | None = None) -> bool:
        """True when an unknown id has not been looked up in the database recently."""
        if device_id in self._devices:
            return False
        now_mono = time.monotonic() if now_mono is None else now_mono
        last = self._misses.get(device_id)
        return last is None or now_mono - last >= self._miss_ttl_s

    def add(self, info: DeviceInfo) -> None:
        self._devices[info.device_id] = info
        self._misses.pop(info.device_id, None)

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT)
            rows = await cur.fetchall()
        self._devices = {str(r["device_id"]): _info(r) for r in rows}
        self._watermark = max((r["changed"] for r in rows), default=None)
        return len(rows)

    async def refresh(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Pick up devices changed since the last load or refresh."""
        if self._watermark is None:
            return await self.load(conn)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _SELECT + " WHERE d.updated_at >= %s OR s.updated_at >= %s",
                (self._watermark, self._watermark),
            )
            rows = await cur.fetchall()
            await cur.execute("SELECT device_id FROM devices")
            present = {r["device_id"] for r in await cur.fetchall()}
        for r in rows:
            self.add(_info(r))
            self._watermark = max(self._watermark, r["changed"])
        for gone in set(self._devices) - present:
            del self._devices[gone]
        return len(rows)

    async def fetch(self, conn: psycopg.AsyncConnection[Any], device_id: str) -> DeviceInfo | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT + " WHERE d.device_id = %s", (device_id,))
            row = await cur.fetchone()
        if row is None:
            self._misses[device_id] = time.monotonic()
            if len(self._misses) > 100_000:  # bounded memory under a flood of random ids
                self._misses.clear()
            return None
        info = _info(row)
        self.add(info)
        return info


# --- `healthmon devices import` --------------------------------------------------

IMPORT_HEADER = ("device_id", "domain", "site_id", "region", "profile", "expected_interval_s")


@dataclass(frozen=True, slots=True)
class ImportRow:
    device_id: str
    domain: str
    site_id: str
    region: str
    profile: str
    expected_interval_s: int


class DeviceImportError(ValueError):
    """A device CSV that cannot be imported; carries the line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def parse_device_csv(text: str) -> list[ImportRow]:
    """Parse `device_id,domain,site_id,region,profile,expected_interval_s`; all or nothing."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != IMPORT_HEADER:
        raise DeviceImportError(1, f"header must be {','.join(IMPORT_HEADER)}")
    out: list[ImportRow] = []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        if len(rec) != len(IMPORT_HEADER):
            raise DeviceImportError(lineno, f"expected {len(IMPORT_HEADER)} fields, got {len(rec)}")
        device_id, domain, site_id, region, profile, interval = (c.strip() for c in rec)
        from ingest.payloads import parse_topic

        if isinstance(parse_topic(f"hm/v1/air/{device_id}/status"), str):
            raise DeviceImportError(lineno, f"bad device_id {device_id!r}")
        if domain not in DOMAINS:
            raise DeviceImportError(lineno, f"unknown domain {domain!r}")
        if not site_id or not region:
            raise DeviceImportError(lineno, "site_id and region are required")
        try:
            seconds = int(interval)
        except ValueError:
            raise DeviceImportError(
                lineno, f"expected_interval_s must be an integer: {interval!r}"
            ) from None
        if seconds <= 0:
            raise DeviceImportError(lineno, "expected_interval_s must be positive")
        out.append(ImportRow(device_id, domain, site_id, region, profile, seconds))
    return out


async def import_devices(conn: psycopg.AsyncConnection[Any], rows: list[ImportRow]) -> int:
    """Upsert sites (created as needed) and devices; re-importing updates. One transaction."""
    async with conn.transaction():
        for r in rows:
            await conn.execute(
                "INSERT INTO sites (site_id, region) VALUES (%s, %s)"
                " ON CONFLICT (site_id) DO UPDATE SET region = EXCLUDED.region, updated_at = now()"
                " WHERE sites.region IS DISTINCT FROM EXCLUDED.region",
                (r.site_id, r.region),
            )
            await conn.execute(
                "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET domain = EXCLUDED.domain,"
                " site_id = EXCLUDED.site_id, profile = EXCLUDED.profile,"
                " expected_interval_s = EXCLUDED.expected_interval_s, updated_at = now()",
                (r.device_id, r.domain, r.site_id, r.profile, r.expected_interval_s),
            )
    return len(rows)
