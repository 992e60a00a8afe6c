"""Read-side queries over what the intake stored: raw readings and rejected messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

_READINGS = """
SELECT ts, device_id, metric, value, seq, received_at, ts_estimated
FROM readings
WHERE device_id = %(device_id)s
  AND (%(metric)s::text IS NULL OR metric = %(metric)s)
  AND (%(start)s::timestamptz IS NULL OR ts >= %(start)s)
  AND (%(end)s::timestamptz IS NULL OR ts < %(end)s)
ORDER BY ts, metric
"""
_REJECTED = """
SELECT id, received_at, topic, device_id, reason, detail, metric, value, ts, payload_size,
       payload
FROM rejected
WHERE (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
  AND (%(reason)s::text IS NULL OR reason = %(reason)s)
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)
ORDER BY id
"""


async def iter_readings(
    conn: psycopg.AsyncConnection[Any],
    *,
    device_id: str,
    metric: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Raw readings of one device in event-time order, streamed with a server-side cursor."""
    params = {"device_id": device_id, "metric": metric, "start": start, "end": end}
    async with conn.transaction(), conn.cursor(name="readings_out", row_factory=dict_row) as cur:
        await cur.execute(_READINGS, params)
        async for row in cur:
            yield row


async def iter_rejected(
    conn: psycopg.AsyncConnection[Any],
    *,
    device_id: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Rejected messages, oldest first; `payload_text` is the stored (bounded) payload,
    with bytes that are not UTF-8 replaced."""
    params = {"device_id": device_id, "reason": reason, "since": since}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_REJECTED, params)
        async for row in cur:
            row["payload_text"] = bytes(row.pop("payload")).decode("utf-8", "replace")
            yield row
