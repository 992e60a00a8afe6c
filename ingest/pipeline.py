"""Wiring of the intake: broker -> parse -> batch -> write (+ alert hook) -> acknowledge.

`Ingest` is an async context manager; `run()` loops until cancelled and drains on
the way out: the messages already received are written and acknowledged, the rest
stay at the broker in our persistent session.

Database outage (with a spool configured): a batch the database cannot take goes to
the disk spool (`ingest/spool.py`) and is acknowledged after the fsync; while the
spool holds anything, new batches queue behind it there, and `ingest.spool_replay`
writes it back in order once the database answers. A full spool waits for room, so
acknowledgements stop and the broker keeps the messages. Without a spool, the batch
is retried with backoff while its acknowledgements are held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from ingest.backoff import Backoff
from ingest.model import DeviceInfo, ParsedMessage, RawMessage, Reason, Rejection
from ingest.mqtt import Delivery, MqttIntake
from ingest.payloads import Limits, parse_message, parse_topic
from ingest.ratelimit import RateLimiter
from ingest.registry import Registry
from ingest.spool import FLAG_DUP, FLAG_RATE_LIMITED, Segment, Spool, SpooledMessage
from ingest.writer import AlertHook, Writer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When to flush: `batch_max_rows` rows, or `flush_interval_s` after the first
    message, or when nothing more arrives within `linger_s` (the broker's in-flight
    window is full, or the stream is idle)."""

    batch_max_rows: int = 5000
    flush_interval_s: float = 0.25
    linger_s: float = 0.005

    def wait_s(self, rows: int, age_s: float) -> float:
        """0 means flush now; otherwise how long to wait for the next message."""
        if rows >= self.batch_max_rows or age_s >= self.flush_interval_s:
            return 0.0
        return min(self.linger_s, self.flush_interval_s - age_s)


def _rows(p: ParsedMessage) -> int:
    return len(p.readings) + len(p.events) + len(p.rejections) + 1


class Ingest:
    """The intake service. Constructor stores arguments; `async with` opens everything."""

    def __init__(
        self,
        *,
        intake: MqttIntake,
        writer: Writer,
        dsn: str,
        limits: Limits,
        policy: BatchPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        backoff: Backoff | None = None,
        registry_refresh_s: float = 15.0,
        spool: Spool | None = None,
    ) -> None:
        self.intake = intake
        self.writer = writer
        self._dsn = dsn
        self._limits = limits
        self._policy = policy or BatchPolicy()
        self._limiter = rate_limiter
        self._backoff = backoff or Backoff()
        self._refresh_s = registry_refresh_s
        self.registry = Registry()
        self.spool = spool
        self._reg_conn: psycopg.AsyncConnection[object] | None = None
        self.messages_processed = 0
        self.db_retries = 0
        self.db_healthy = False

    async def __aenter__(self) -> Ingest:
        if self.spool is not None:
            # Opened first: a spool left by a crash is replayed before anything newer.
            await self.spool.__aenter__()
        self._reg_conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        n = await self.registry.load(self._reg_conn)
        logger.info("registry: %d devices", n)
        await self.writer.connect()
        self.db_healthy = True
        await self.intake.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        w = self.writer.stats
        logger.info(
            "intake stopping: %d messages, %d readings in %d batches (%.0f readings per batch,"
            " %.1f ms per write)",
            self.messages_processed,
            w.readings_written,
            w.batches,
            w.readings_written / max(1, w.batches),
            1000 * w.write_seconds_total / max(1, w.batches),
        )
        try:
            await self.intake.__aexit__(*exc)
        finally:
            await self.writer.close()
            if self._reg_conn is not None:
                await self._reg_conn.close()
            if self.spool is not None:
                await self.spool.__aexit__(*exc)

    async def run(self, *, max_messages: int | None = None) -> None:
        """Process until cancelled (or `max_messages`, for tests); drains on cancellation."""
        async with asyncio.TaskGroup() as tg:
            helpers = [tg.create_task(self._refresh_loop(), name="ingest.registry_refresh")]
            if self.spool is not None:
                helpers.append(tg.create_task(self._replay_loop(), name="ingest.spool_replay"))
            try:
                await self._intake_loop(max_messages)
            finally:
                for task in helpers:
                    task.cancel()

    async def _intake_loop(self, max_messages: int | None) -> None:
        pending: list[tuple[Delivery, ParsedMessage]] = []
        try:
            while max_messages is None or self.messages_processed < max_messages:
                first = await self.intake.get()
                pending = [(first, await self._parse(first))]
                started = time.monotonic()
                rows = _rows(pending[0][1])
                while True:
                    wait = self._policy.wait_s(rows, time.monotonic() - started)
                    if wait <= 0:
                        break
                    nxt = self.intake.get_nowait() or await self.intake.get_within(wait)
                    if nxt is None:
                        break
                    parsed = await self._parse(nxt)
                    pending.append((nxt, parsed))
                    rows += _rows(parsed)
                await self._commit(pending)
                pending = []
        except asyncio.CancelledError:
            # Drain: what we already hold is written and acknowledged before we go.
            self.intake.pause()
            while (d := self.intake.get_nowait()) is not None:
                pending.append((d, await self._parse(d)))
            if pending:
                logger.info("draining %d messages before exit", len(pending))
                await self._commit(pending)
            raise

    async def _parse(self, d: Delivery) -> ParsedMessage:
        return await self._parse_raw(d.message, rate_limited=None)

    async def _parse_raw(self, msg: RawMessage, *, rate_limited: bool | None) -> ParsedMessage:
        """Parse one message; `rate_limited` None asks the limiter, a bool replays its verdict."""
        now = datetime.now(UTC)
        topic = parse_topic(msg.topic)
        if not isinstance(topic, str):
            device_id = topic[1]
            if rate_limited is None:
                rate_limited = bool(
                    self._limiter and not self._limiter.allow(device_id, time.monotonic())
                )
            if rate_limited:
                out = ParsedMessage(domain=topic[0], device_id=device_id)
                out.rejections.append(
                    Rejection(
                        Reason.RATE_LIMITED,
                        "per-device message rate exceeded",
                        msg.topic,
                        msg.received_at,
                        device_id,
                        msg.payload,
                    )
                )
                return out
            if self.registry.needs_fetch(device_id) and self._reg_conn is not None:
                try:
                    await self.registry.fetch(self._reg_conn, device_id)
                except psycopg.OperationalError:
                    logger.warning("registry lookup failed; treating %s as unknown", device_id)
        parsed = parse_message(
            msg, now=now, lookup=self.registry.get, limits=self._limits, topic=topic
        )
        if parsed.register is not None:
            self.registry.add(parsed.register)
        return parsed

    async def _commit(self, pending: list[tuple[Delivery, ParsedMessage]]) -> None:
        """Write the batch (or spool it through a database outage), then acknowledge it."""
        if self.spool is not None and (self.spool.pending or not self.db_healthy):
            await self._to_spool(pending)  # behind what is already spooled, in order
        elif await self._write_batch([p for _, p in pending], spill=pending):
            for d, _ in pending:
                self.intake.ack(d)
        self.messages_processed += len(pending)

    async def _to_spool(self, pending: list[tuple[Delivery, ParsedMessage]]) -> None:
        """Append to the spool in pieces of at most a segment, acknowledging each piece
        once it is durable: a full spool holds back only what did not fit."""
        assert self.spool is not None
        limit = self.spool.segment_max_bytes
        piece: list[tuple[Delivery, SpooledMessage]] = []
        size = 0
        for d, p in pending:
            m = _spooled(d, p)
            piece.append((d, m))
            size += len(m.payload) + len(m.topic) + 32
            if size >= limit:
                await self._spool_piece(piece)
                piece, size = [], 0
        if piece:
            await self._spool_piece(piece)

    async def _spool_piece(self, piece: list[tuple[Delivery, SpooledMessage]]) -> None:
        assert self.spool is not None
        await self.spool.append([m for _, m in piece])
        for d, _ in piece:
            self.intake.ack(d)

    async def _write_batch(
        self,
        items: list[ParsedMessage],
        *,
        spill: list[tuple[Delivery, ParsedMessage]] | None = None,
    ) -> bool:
        """Write in one transaction, retrying through outages; with `spill` and a spool,
        an outage sends the batch to the spool instead of waiting (and acknowledges it
        there: False is returned)."""
        devices = self._devices_of(items)
        attempt = 0
        while True:
            try:
                await self.writer.write(items, now=datetime.now(UTC), devices=devices)
                self.db_healthy = True
                return True
            except psycopg.OperationalError as exc:
                self.db_healthy = False
                self.db_retries += 1
                await self.writer.close()
                if spill is not None and self.spool is not None:
                    logger.warning("database write failed (%s); spooling to disk", exc)
                    await self._to_spool(spill)
                    return False
                delay = self._backoff.delay(attempt)
                attempt += 1
                logger.warning(
                    "database write failed (%s); retry %d in %.2f s", exc, attempt, delay
                )
                await asyncio.sleep(delay)
            except psycopg.Error as exc:
                # Not an outage: something in the batch the database refuses. Write the
                # messages one by one so one bad message cannot hold up the rest.
                logger.error(
                    "batch refused (%s); writing its %d messages one by one", exc, len(items)
                )
                await self.writer.close()
                await self._commit_one_by_one(items, devices)
                return True

    async def _replay_loop(self) -> None:
        """Write spooled segments back, oldest first, each deleted once committed."""
        assert self.spool is not None
        while True:
            await self.spool.wait_pending()
            segment = await self.spool.next_segment()
            if segment is None:
                continue
            await self._replay(segment)
            await self.spool.release(segment)
            if not self.spool.pending:
                logger.info("spool drained (%d messages replayed)", self.spool.replayed_total)

    async def _replay(self, segment: Segment) -> None:
        step = max(1, self._policy.batch_max_rows // 4)
        for start in range(0, len(segment.messages), step):
            items = [
                await self._parse_raw(
                    RawMessage(
                        m.topic, m.payload, m.received_at, qos=1, dup=bool(m.flags & FLAG_DUP)
                    ),
                    rate_limited=bool(m.flags & FLAG_RATE_LIMITED),
                )
                for m in segment.messages[start : start + step]
            ]
            await self._write_batch(items)  # retries with backoff until the database is back

    async def _commit_one_by_one(
        self, items: list[ParsedMessage], devices: dict[str, DeviceInfo]
    ) -> None:
        for item in items:
            try:
                await self.writer.write([item], now=datetime.now(UTC), devices=devices)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                await self.writer.close()
                rejected = ParsedMessage(domain=item.domain, device_id=item.device_id)
                first = _first_payload(item)
                rejected.rejections.append(
                    Rejection(
                        Reason.SCHEMA,
                        f"refused by the database: {exc}"[:500],
                        first[0],
                        first[1],
                        item.device_id,
                        first[2],
                    )
                )
                await self.writer.write([rejected], now=datetime.now(UTC), devices=devices)

    def _devices_of(self, items: list[ParsedMessage]) -> dict[str, DeviceInfo]:
        out: dict[str, DeviceInfo] = {}
        for p in items:
            if p.device_id and p.device_id not in out:
                info = self.registry.get(p.device_id)
                if info is not None:
                    out[p.device_id] = info
        return out

    async def _refresh_loop(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                if self._reg_conn is None or self._reg_conn.closed or self._reg_conn.broken:
                    self._reg_conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True
                    )
                await self.registry.refresh(self._reg_conn)
                attempt = 0
            except psycopg.OperationalError as exc:
                attempt += 1
                logger.warning("registry refresh failed: %s", exc)
                await asyncio.sleep(self._backoff.delay(attempt))

    def metrics(self) -> str:
        """Prometheus text for /metrics."""
        w, m = self.writer.stats, self.intake.stats
        lines = list(_metric_lines(w.rejected_by_reason))
        lines += [
            "# TYPE healthmon_messages_received_total counter",
            f"healthmon_messages_received_total {m.received}",
            "# TYPE healthmon_messages_acked_total counter",
            f"healthmon_messages_acked_total {m.acked}",
            "# TYPE healthmon_readings_written_total counter",
            f"healthmon_readings_written_total {w.readings_written}",
            "# TYPE healthmon_readings_duplicate_total counter",
            f"healthmon_readings_duplicate_total {w.readings_duplicate}",
            "# TYPE healthmon_events_written_total counter",
            f"healthmon_events_written_total {w.events_written}",
            "# TYPE healthmon_write_batches_total counter",
            f"healthmon_write_batches_total {w.batches}",
            "# TYPE healthmon_write_seconds_total counter",
            f"healthmon_write_seconds_total {w.write_seconds_total:.6f}",
            "# TYPE healthmon_write_latency_ms gauge",
            f"healthmon_write_latency_ms {w.last_write_ms:.3f}",
            "# TYPE healthmon_intake_queue_depth gauge",
            f"healthmon_intake_queue_depth {self.intake.queue_depth()}",
            "# TYPE healthmon_db_write_retries_total counter",
            f"healthmon_db_write_retries_total {self.db_retries}",
            "# TYPE healthmon_alert_hook_errors_total counter",
            f"healthmon_alert_hook_errors_total {w.alert_hook_errors}",
            "# TYPE healthmon_broker_connected gauge",
            f"healthmon_broker_connected {int(self.intake.connected)}",
            "# TYPE healthmon_mqtt_sessions_resumed_total counter",
            f"healthmon_mqtt_sessions_resumed_total {m.sessions_resumed}",
            "# TYPE healthmon_db_healthy gauge",
            f"healthmon_db_healthy {int(self.db_healthy)}",
        ]
        if self.spool is not None:
            sp = self.spool
            lines += [
                "# TYPE healthmon_spool_bytes gauge",
                f"healthmon_spool_bytes {sp.size_bytes}",
                "# TYPE healthmon_spooled_messages_total counter",
                f"healthmon_spooled_messages_total {sp.spooled_total}",
                "# TYPE healthmon_spool_replayed_messages_total counter",
                f"healthmon_spool_replayed_messages_total {sp.replayed_total}",
            ]
        return "\n".join(lines) + "\n"


def _metric_lines(by_reason: dict[str, int]) -> Iterator[str]:
    yield "# TYPE healthmon_rejected_total counter"
    for reason, n in sorted(by_reason.items()):
        yield f'healthmon_rejected_total{{reason="{reason}"}} {n}'


def _spooled(d: Delivery, p: ParsedMessage) -> SpooledMessage:
    limited = any(r.reason == Reason.RATE_LIMITED for r in p.rejections)
    m = d.message
    flags = (FLAG_RATE_LIMITED if limited else 0) | (FLAG_DUP if m.dup else 0)
    return SpooledMessage(m.topic, m.payload, m.received_at, flags)


def _first_payload(item: ParsedMessage) -> tuple[str, datetime, bytes]:
    if item.rejections:
        r = item.rejections[0]
        return r.topic, r.received_at, r.payload
    t = item.readings[0].received_at if item.readings else None
    return (f"hm/v1/{item.domain}/{item.device_id}/telemetry", t or datetime.now(UTC), b"")


__all__ = ["AlertHook", "BatchPolicy", "Ingest"]
