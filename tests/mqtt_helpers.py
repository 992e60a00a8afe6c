"""Test-side MQTT and database helpers (tests talk to the real broker and database)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion


class Publisher:
    """A blocking QoS 1 publisher for tests."""

    def __init__(self, host: str, port: int, client_id: str | None = None) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = self.client.publish(topic, body, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_for(
    predicate: Callable[[], Any], *, timeout_s: float = 15.0, interval_s: float = 0.05
) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last: {last!r})")


async def scalar(dsn: str, query: str, params: Any = None) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return row[0] if row else None


async def register_device(
    dsn: str,
    device_id: str,
    domain: str,
    *,
    site: str = "site-t",
    region: str = "region-t",
    profile: str = "",
    interval_s: int = 60,
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO sites (site_id, region) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (site, region),
        )
        await conn.execute(
            "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id) DO NOTHING",
            (device_id, domain, site, profile, interval_s),
        )
