"""Batched, idempotent writes: one transaction per batch, COPY into a stage, dedup on insert.

Readings go through a temporary stage table (COPY, or a single multi-row INSERT on
engines without COPY FROM STDIN) and then `INSERT ... ON CONFLICT DO NOTHING
RETURNING`, so only newly stored rows come back: those, and only those, move
`latest_readings` and the alert engine. The caller acknowledges the batch's
messages after `write` returns, i.e. after COMMIT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import psycopg

from ingest.model import (
    DeviceInfo,
    EvalBatch,
    Event,
    ParsedMessage,
    Reading,
    Reason,
    Rejection,
    StatusUpdate,
)

logger = logging.getLogger(__name__)

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_readings ("
    " ts timestamptz, device_id text, metric text, value double precision, seq bigint,"
    " received_at timestamptz, ts_estimated boolean, i integer, redelivered boolean)"
    " ON COMMIT DELETE ROWS"
)
_COPY = (
    "COPY stage_readings (ts, device_id, metric, value, seq, received_at, ts_estimated, i,"
    " redelivered)"
    " FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = [
    "timestamptz", "text", "text", "float8", "int8", "timestamptz", "bool", "int4", "bool"
]  # fmt: skip
_STAGE_INSERT = (
    "INSERT INTO stage_readings SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[],"
    " %s::float8[], %s::int8[], %s::timestamptz[], %s::bool[], %s::int4[], %s::bool[])"
)
# Insert what is new, move latest_readings forward by event time only; return how many
# rows were new and, only when some were not (a redelivery, a re-sent backlog), which
# staged rows they were: the first of equal keys, as the insert takes them in order.
_MERGE = """
WITH ins AS (
    INSERT INTO readings (ts, device_id, metric, value, seq, received_at, ts_estimated)
    SELECT ts, device_id, metric, value, seq, received_at, ts_estimated FROM stage_readings s
    WHERE NOT (s.redelivered AND EXISTS (
        SELECT 1 FROM readings r
        WHERE r.device_id = s.device_id AND r.metric = s.metric
          AND r.ts > s.ts - interval '1 day' AND r.ts <= s.ts
          AND r.ts_estimated AND r.seq = s.seq))
    ORDER BY i
    ON CONFLICT (device_id, metric, ts) DO NOTHING
    RETURNING ts, device_id, metric, value, received_at
), latest AS (
    INSERT INTO latest_readings (device_id, metric, ts, value, received_at)
    SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, received_at
    FROM ins WHERE value IS NOT NULL ORDER BY device_id, metric, ts DESC
    ON CONFLICT (device_id, metric) DO UPDATE
    SET ts = EXCLUDED.ts, value = EXCLUDED.value, received_at = EXCLUDED.received_at
    WHERE latest_readings.ts < EXCLUDED.ts
), n AS (SELECT count(*) AS stored FROM ins)
SELECT n.stored, CASE WHEN n.stored < %s THEN (
    SELECT array_agg(q.i ORDER BY q.i) FROM (
        SELECT DISTINCT ON (s.device_id, s.metric, s.ts) s.i
        FROM stage_readings s JOIN ins USING (device_id, metric, ts)
        ORDER BY s.device_id, s.metric, s.ts, s.i) q
) END
FROM n
"""
_EVENTS = """
INSERT INTO events (ts, device_id, type, bag_id, attrs, received_at)
SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::jsonb[],
                     %s::timestamptz[])
ON CONFLICT (device_id, type, ts, bag_id) DO NOTHING
RETURNING ts, device_id, type, bag_id, attrs, received_at
"""
_REJECTED = """
INSERT INTO rejected (received_at, topic, device_id, reason, detail, metric, value, ts, payload,
                      payload_size)
SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::text[], %s::float8[], %s::timestamptz[], %s::bytea[], %s::int[])
"""
_STATUS = (
    "UPDATE devices SET online = %s, status_changed_at = %s"
    " WHERE device_id = %s AND (status_changed_at IS NULL OR status_changed_at <= %s)"
)
_LAST_SEEN = """
UPDATE devices SET last_seen = v.t
FROM (SELECT unnest(%s::text[]) AS id, unnest(%s::timestamptz[]) AS t) v
WHERE devices.device_id = v.id AND (devices.last_seen IS NULL OR devices.last_seen < v.t)
"""
_REGISTER = (
    "INSERT INTO devices (device_id, domain, auto_registered) VALUES (%s, %s, true)"
    " ON CONFLICT (device_id) DO NOTHING"
)
# Per message: at most this many rejection rows (the rest summarised in one more row);
# the payload is kept on the first row only.
MAX_REJECTIONS_PER_MESSAGE = 50
LAST_SEEN_EVERY_S = 10.0


class AlertHook(Protocol):
    """What the writer calls inside its transaction (alerts.AlertEngine satisfies it)."""

    async def on_batch(
        self, conn: psycopg.AsyncConnection[Any], batch: EvalBatch, now: datetime
    ) -> None: ...


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    readings_written: int = 0
    readings_duplicate: int = 0
    events_written: int = 0
    rejected_written: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    alert_hook_errors: int = 0
    write_seconds_total: float = 0.0
    last_write_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    new_readings: list[Reading]
    new_events: list[Event]


def bounded_rejections(parsed: ParsedMessage, payload_max_bytes: int) -> list[tuple[Any, ...]]:
    """Rows for `rejected` from one message: bounded in count and payload size."""
    rows: list[tuple[Any, ...]] = []
    rejections = parsed.rejections
    for i, r in enumerate(rejections[:MAX_REJECTIONS_PER_MESSAGE]):
        payload = r.payload[:payload_max_bytes] if i == 0 else b""
        rows.append(
            (
                r.received_at,
                r.topic[:512],
                r.device_id,
                str(r.reason),
                r.detail[:1000],
                r.metric,
                r.value,
                r.ts,
                payload,
                len(r.payload),
            )
        )
    extra = len(rejections) - MAX_REJECTIONS_PER_MESSAGE
    if extra > 0:
        last = rejections[-1]
        rows.append(
            (
                last.received_at,
                last.topic[:512],
                last.device_id,
                str(last.reason),
                f"and {extra} more rejected values in this message",
                None,
                None,
                None,
                b"",
                len(last.payload),
            )
        )
    return rows


class Writer:
    """Writes batches of parsed messages on one connection it owns."""

    def __init__(
        self,
        *,
        dsn: str,
        method: str = "copy",
        alert_hook: AlertHook | None = None,
        rejected_payload_max_bytes: int = 4096,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._method = method
        self._hook = alert_hook
        self._payload_max = rejected_payload_max_bytes
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._last_seen_written: dict[str, datetime] = {}
        self.stats = WriterStats()

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # A bounded connect: an unreachable database must fail the attempt (and send
            # the batch to the spool) rather than hang the intake.
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn, connect_timeout=max(1, round(self._connect_timeout_s))
            )
            self._last_seen_written.clear()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Writer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(
        self,
        items: Sequence[ParsedMessage],
        *,
        now: datetime,
        devices: dict[str, DeviceInfo] | None = None,
    ) -> WriteResult:
        """Store one batch in one transaction. Raises psycopg errors to the caller."""
        conn = await self.connect()
        started = time.monotonic()
        readings = [r for p in items for r in p.readings]
        events = [e for p in items for e in p.events]
        statuses = [p.status for p in items if p.status is not None]
        rejected_rows = [row for p in items for row in bounded_rejections(p, self._payload_max)]
        registrations = [p.register for p in items if p.register is not None]
        async with conn.transaction():
            for reg in registrations:
                await conn.execute(_REGISTER, (reg.device_id, reg.domain))
            new_readings = await self._write_readings(conn, readings) if readings else []
            new_events = await self._write_events(conn, events) if events else []
            for status in statuses:
                await conn.execute(_STATUS, (status.online, status.ts, status.device_id, status.ts))
            if rejected_rows:
                await conn.execute(_REJECTED, _columns(rejected_rows, 10))
            await self._touch_last_seen(conn, items)
            if self._hook is not None:
                await self._run_hook(
                    conn,
                    EvalBatch(
                        readings=new_readings,
                        events=new_events,
                        statuses=statuses,
                        faults=_faults(items),
                        devices=devices or {},
                    ),
                    now,
                )
        elapsed = time.monotonic() - started
        st = self.stats
        st.batches += 1
        st.readings_written += len(new_readings)
        st.readings_duplicate += len(readings) - len(new_readings)
        st.events_written += len(new_events)
        st.rejected_written += len(rejected_rows)
        for p in items:
            for r in p.rejections:
                st.rejected_by_reason[r.reason] = st.rejected_by_reason.get(r.reason, 0) + 1
        st.write_seconds_total += elapsed
        st.last_write_ms = elapsed * 1000
        return WriteResult(new_readings, new_events)

    async def _write_readings(
        self, conn: psycopg.AsyncConnection[Any], readings: list[Reading]
    ) -> list[Reading]:
        """Stage, insert what is new; return the readings this batch stored (all of them,
        unless some were already there: a redelivery or a re-sent backlog)."""
        await conn.execute(_STAGE)
        rows = [
            (
                r.ts,
                r.device_id,
                r.metric,
                r.value,
                r.seq,
                r.received_at,
                r.ts_estimated,
                i,
                r.redelivered,
            )
            for i, r in enumerate(readings)
        ]
        if self._method == "copy":
            async with conn.cursor() as cur, cur.copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    await copy.write_row(row)
        else:
            await conn.execute(_STAGE_INSERT, _columns(rows, 9))
        cur = await conn.execute(_MERGE, (len(readings),))
        stored, new_rows = await cur.fetchone() or (0, None)
        if stored == len(readings):
            return readings
        return [readings[i] for i in new_rows or ()]

    async def _write_events(
        self, conn: psycopg.AsyncConnection[Any], events: list[Event]
    ) -> list[Event]:
        rows = [
            (
                e.ts,
                e.device_id,
                e.type,
                e.bag_id or "",
                orjson.dumps(e.attrs).decode(),
                e.received_at,
            )
            for e in events
        ]
        cur = await conn.execute(_EVENTS, _columns(rows, 6))
        return [
            Event(
                ts=r[0],
                device_id=r[1],
                type=r[2],
                bag_id=r[3] or None,
                attrs=r[4],
                received_at=r[5],
            )
            for r in await cur.fetchall()
        ]

    async def _touch_last_seen(
        self, conn: psycopg.AsyncConnection[Any], items: Sequence[ParsedMessage]
    ) -> None:
        """Keep devices.last_seen current without an UPDATE per message."""
        latest: dict[str, datetime] = {}
        for p in items:
            if p.device_id is None or (p.rejections and p.rejections[0].reason in _NOT_SEEN):
                continue
            t = _received(p)
            if t is not None and (p.device_id not in latest or latest[p.device_id] < t):
                latest[p.device_id] = t
        due = {
            d: t
            for d, t in latest.items()
            if d not in self._last_seen_written
            or t - self._last_seen_written[d] >= timedelta(seconds=LAST_SEEN_EVERY_S)
        }
        if due:
            await conn.execute(_LAST_SEEN, (list(due), list(due.values())))
            self._last_seen_written.update(due)
            if len(self._last_seen_written) > 200_000:
                self._last_seen_written.clear()

    async def _run_hook(
        self, conn: psycopg.AsyncConnection[Any], batch: EvalBatch, now: datetime
    ) -> None:
        assert self._hook is not None
        try:
            # A savepoint: a fault in rule evaluation must never cost the readings.
            async with conn.transaction():
                await self._hook.on_batch(conn, batch, now)
        except psycopg.OperationalError:
            raise
        except Exception:
            self.stats.alert_hook_errors += 1
            logger.exception(
                "alert evaluation failed for a batch of %d readings", len(batch.readings)
            )


# Rejections that say nothing about the device being alive.
_NOT_SEEN = frozenset(
    {Reason.UNKNOWN_DEVICE, Reason.BAD_TOPIC, Reason.DEVICE_DISABLED, Reason.DOMAIN_MISMATCH}
)


def _received(p: ParsedMessage) -> datetime | None:
    if p.readings:
        return p.readings[0].received_at
    if p.events:
        return p.events[0].received_at
    if p.rejections:
        return p.rejections[0].received_at
    return p.status.ts if p.status else None


def _faults(items: Sequence[ParsedMessage]) -> list[Rejection]:
    return [r for p in items for r in p.rejections if r.reason == Reason.OUT_OF_PHYSICAL_RANGE]


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples -> one list per column, for `unnest(%s::type[], ...)`."""
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, v in enumerate(row):
            cols[i].append(v)
    return cols


__all__ = ["AlertHook", "StatusUpdate", "WriteResult", "Writer", "WriterStats"]
