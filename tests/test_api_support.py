"""Fixtures and helpers shared by the API tests (imported by tests/test_api_*.py).

The app runs in-process through its lifespan against the real test database; requests
go through httpx's ASGI transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from psycopg.rows import dict_row

from api import create_app
from api.auth import hash_password, new_api_key
from healthmon.settings import Settings

SESSION_SECRET = "test-session-secret"
USER_PASSWORD = "correct horse battery"


@dataclass
class ApiEnv:
    """A running app, its database and a key per role (plus region-limited ones)."""

    app: FastAPI
    dsn: str
    region: str  # the region of the limited keys
    other_region: str
    keys: dict[str, str] = field(default_factory=dict)
    user: str = ""

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys.get(key, key)}"} if key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers=headers,
            **kwargs,
        )


async def make_keys(dsn: str, region: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, prepare_threshold=None
    ) as conn:
        for role in ("admin", "operator", "viewer"):
            for limited in (False, True):
                key_id, key, key_hash = new_api_key()
                regions = [region] if limited else []
                await conn.execute(
                    "INSERT INTO api_keys (key_id, secret_hash, role, regions) VALUES"
                    " (%s, %s, %s, %s)",
                    (key_id, key_hash, role, regions),
                )
                keys[f"{role}@{region}" if limited else role] = key
    return keys


def settings_for(dsn: str, **kw: Any) -> Settings:
    return Settings(
        database_url=dsn, session_secret=SESSION_SECRET, mqtt_url=None, _env_file=None, **kw
    )


@pytest.fixture(scope="session")
async def api_env(pg_dsn: str) -> AsyncIterator[ApiEnv]:
    app = create_app(settings_for(pg_dsn), sse_poll_s=30.0, sse_heartbeat_s=30.0)
    region, other = "test-region-a", "test-region-b"
    keys = await make_keys(pg_dsn, region)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO users (username, password_hash, role, regions) VALUES"
            " ('duty-officer', %s, 'operator', '{}') ON CONFLICT DO NOTHING",
            (hash_password(USER_PASSWORD),),
        )
    async with LifespanManager(app):
        yield ApiEnv(app, pg_dsn, region, other, keys, "duty-officer")


async def db(dsn: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)


async def seed_site_device(
    dsn: str,
    uid: Callable[[str], str],
    *,
    region: str,
    domain: str = "coldchain",
    profile: str = "fridge",
    interval_s: int = 60,
) -> tuple[str, str]:
    site_id, device_id = uid("site"), uid("dev")
    async with await db(dsn) as conn:
        await conn.execute(
            "INSERT INTO sites (site_id, name, region) VALUES (%s, 'Test site', %s)",
            (site_id, region),
        )
        await conn.execute(
            "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
            " VALUES (%s, %s, %s, %s, %s)",
            (device_id, domain, site_id, profile, interval_s),
        )
    return site_id, device_id


async def seed_alert(
    dsn: str,
    device_id: str,
    site_id: str,
    region: str,
    *,
    state: str = "firing",
    rule_id: str = "coldchain.heat",
) -> str:
    async with await db(dsn) as conn:
        cur = await conn.execute(
            "INSERT INTO alerts (rule_id, subject, device_id, site_id, region, domain, metric,"
            " severity, state, started_at, detected_at, value, threshold, message)"
            " VALUES (%s, %s, %s, %s, %s, 'coldchain', 'temp_c', 'critical',"
            " %s, %s, %s, 9.4, 8.0, 'too warm') RETURNING id",
            (
                rule_id,
                f"device:{device_id}",
                device_id,
                site_id,
                region,
                state,
                datetime(2026, 11, 23, 4, tzinfo=UTC),
                datetime(2026, 11, 23, 4, 1, tzinfo=UTC),
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        alert_id = str(row["id"])
        await conn.execute(
            "INSERT INTO alert_events (alert_id, kind, state) VALUES (%s, 'fired', %s)",
            (alert_id, state),
        )
    return alert_id


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert body["title"]
    return body
