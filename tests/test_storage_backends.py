"""Storage on both backends: TimescaleDB (a real engine, PGlite + TimescaleDB in WASM) and
plain PostgreSQL with native partitioning; the writer and history agree on both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingest import DeviceInfo, ParsedMessage, RawMessage, Reading
from ingest.mqtt import Delivery
from ingest.partitions import EPOCH, _create_partition, partition_name, plan_partitions
from ingest.payloads import Limits, parse_message
from ingest.pipeline import _spooled
from ingest.spool import FLAG_DUP, decode_all, encode
from ingest.writer import Writer

DAY0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
# The hourly series both backends must agree on (the cagg on one, date_bin on the other).
HOURLY_CAGG = """
SELECT bucket, avg, min, max, last, count FROM readings_1h
WHERE device_id = %s AND metric = 'temp_c' AND bucket >= %s AND bucket < %s ORDER BY bucket
"""
HOURLY_RAW = """
SELECT date_bin('1 hour', ts, TIMESTAMPTZ '2000-01-01 00:00+00') AS bucket, avg(value),
       min(value), max(value), (array_agg(value ORDER BY ts DESC))[1], count(value)
FROM readings WHERE device_id = %s AND metric = 'temp_c' AND ts >= %s AND ts < %s
GROUP BY 1 ORDER BY 1
"""


def day_of_readings(device_id: str) -> list[ParsedMessage]:
    """A fridge reporting every 5 minutes for a day, with a warm spell and a null."""
    out = []
    for i in range(288):
        ts = DAY0 + timedelta(minutes=5 * i)
        temp = 5.0 + (i % 12) * 0.1 + (4.0 if 100 <= i < 110 else 0.0)
        value = None if i == 50 else round(temp, 2)
        out.append(
            ParsedMessage(
                domain="coldchain",
                device_id=device_id,
                readings=[
                    Reading(
                        ts=ts,
                        device_id=device_id,
                        metric="temp_c",
                        value=value,
                        seq=i,
                        received_at=ts,
                    ),
                    Reading(
                        ts=ts,
                        device_id=device_id,
                        metric="door_open",
                        value=0.0,
                        seq=i,
                        received_at=ts,
                    ),
                ],
            )
        )
    return out


async def write_all(dsn: str, method: str, items: list[ParsedMessage]) -> int:
    async with Writer(dsn=dsn, method=method) as writer:
        new = 0
        for i in range(0, len(items), 100):
            res = await writer.write(items[i : i + 100], now=datetime.now(UTC))
            new += len(res.new_readings)
        return new


@pytest.mark.timescaledb
async def test_timescaledb_hypertable_policies_dedup_and_continuous_aggregates(
    timescale_dsn, pg_dsn, uid
):
    dev = uid("fridge")
    items = day_of_readings(dev)
    # COPY FROM STDIN is not available on this engine: the writer's insert method.
    assert await write_all(timescale_dsn, "insert", items) == 576
    assert await write_all(timescale_dsn, "insert", items[:50]) == 0  # redelivered: no-op

    async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
        backend = await (
            await conn.execute("SELECT value FROM meta WHERE key='backend'")
        ).fetchone()
        assert backend == ("timescaledb",)
        cur = await conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'readings'"
        )
        assert await cur.fetchone() == (True,)
        cur = await conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings"
            " WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL"
        )
        assert [r[0] for r in await cur.fetchall()] == ["device_id"]
        cur = await conn.execute(
            "SELECT proc_name FROM timescaledb_information.jobs"
            " WHERE hypertable_name = 'readings' ORDER BY 1"
        )
        assert [r[0] for r in await cur.fetchall()] == ["policy_compression", "policy_retention"]

        # Compress the chunks, then deliver the same readings again: still stored once.
        await conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('readings') c"
        )
        cur = await conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name='readings' AND is_compressed"
        )
        assert (await cur.fetchone())[0] >= 1  # type: ignore[index]

    assert await write_all(timescale_dsn, "insert", items[100:120]) == 0

    async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM readings WHERE device_id = %s", (dev,))
        assert await cur.fetchone() == (576,)
        await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")
        window = (dev, DAY0, DAY0 + timedelta(days=1))
        tsdb_hourly = await (await conn.execute(HOURLY_CAGG, window)).fetchall()

    # The same data on the machine's PostgreSQL (partitioned, COPY), the same answer.
    plain_dev = dev
    plain_items = day_of_readings(plain_dev)
    assert await write_all(pg_dsn, "copy", plain_items) == 576
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        plain_hourly = await (await conn.execute(HOURLY_RAW, window)).fetchall()
    assert len(tsdb_hourly) == 24
    assert [tuple(r) for r in tsdb_hourly] == [
        (b, pytest.approx(a), mn, mx, last, c) for b, a, mn, mx, last, c in plain_hourly
    ]
    warm = [r for r in tsdb_hourly if r[3] > 8]
    assert warm and all(r[3] == pytest.approx(9.1 + 0.0, abs=1.0) for r in warm)


async def test_plain_postgres_partitions_rows_by_event_time_and_drops_expired(pg_dsn, uid):
    dev = uid("tap")
    items = day_of_readings(dev)
    assert await write_all(pg_dsn, "copy", items) == 576
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM readings WHERE device_id = %s", (dev,)
        )
        parts = {r[0] for r in await cur.fetchall()}
        assert parts and "readings_default" not in parts
        assert all(p.startswith("readings_p") for p in parts)


def test_partition_plan_creates_ahead_and_drops_only_whole_expired_partitions():
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    plan = plan_partitions([], now, retention_days=28, width_days=7, ahead=2)
    starts = [lo for lo, _ in plan.create]
    assert starts[0] <= now - timedelta(days=28) < starts[0] + timedelta(days=7)
    assert starts[-1] > now + timedelta(days=7)  # two partitions ahead of the current one
    assert all(b - a == timedelta(days=7) for a, b in plan.create)
    existing = [partition_name(lo) for lo in starts]
    later = plan_partitions(
        existing, now + timedelta(days=30), retention_days=28, width_days=7, ahead=2
    )
    horizon = now + timedelta(days=2)
    for name in later.drop:
        lo = datetime.strptime(name[-8:], "%Y%m%d").replace(tzinfo=UTC)
        assert lo + timedelta(days=7) <= horizon
    assert len(later.drop) >= 4
    assert later.create  # and new ones ahead


async def test_rows_caught_by_the_default_partition_move_when_their_partition_is_made(pg_dsn, uid):
    dev = uid("old")
    far = datetime.now(UTC) + timedelta(days=7 * 52)  # beyond the partitions made ahead
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, received_at)"
            " VALUES (%s, %s, 'ph', 7, now())",
            (far, dev),
        )
        cur = await conn.execute(
            "SELECT tableoid::regclass::text FROM readings WHERE device_id = %s", (dev,)
        )
        assert await cur.fetchone() == ("readings_default",)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        lo = EPOCH + timedelta(days=7) * ((far - EPOCH) // timedelta(days=7))
        await _create_partition(conn, lo, lo + timedelta(days=7))
        cur = await conn.execute(
            "SELECT tableoid::regclass::text FROM readings WHERE device_id = %s", (dev,)
        )
        (where,) = await cur.fetchone()  # type: ignore[misc]
        assert where.startswith("readings_p")
        await conn.execute("DELETE FROM readings WHERE device_id = %s", (dev,))


async def check_only_new_readings_handed_on(dsn: str, method: str, dev: str) -> None:
    """What reaches the alert engine: a batch that re-sends stored readings (and repeats
    one of its own) yields exactly the readings stored by this write, in order."""
    items = day_of_readings(dev)[:10]  # 2 readings per message
    async with Writer(dsn=dsn, method=method) as writer:
        first = await writer.write(items[:4], now=datetime.now(UTC))
        assert first.new_readings == [r for p in items[:4] for r in p.readings]

        again = await writer.write(items[:4] + items[4:10] + [items[5]], now=datetime.now(UTC))
        assert again.new_readings == [r for p in items[4:10] for r in p.readings]
        assert writer.stats.readings_duplicate == 8 + 2

        nothing_new = await writer.write(items[2:6], now=datetime.now(UTC))
        assert nothing_new.new_readings == []


async def test_the_writer_hands_on_only_new_readings_postgres(pg_dsn, uid):
    await check_only_new_readings_handed_on(pg_dsn, "copy", uid("dedup"))


@pytest.mark.timescaledb
async def test_the_writer_hands_on_only_new_readings_timescaledb(timescale_dsn, uid):
    await check_only_new_readings_handed_on(timescale_dsn, "insert", uid("dedup"))


async def test_a_redelivered_sample_without_ts_is_stored_once_by_its_seq(pg_dsn, uid):
    """A sample without `ts` is stored at its receive time, which differs on a QoS 1
    redelivery: the broker's DUP flag plus the sample's `seq` identify the copy (also
    after a trip through the disk spool). Without a `seq` nothing identifies it."""
    dev = uid("nots")
    topic = f"hm/v1/coldchain/{dev}/telemetry"
    info = DeviceInfo(device_id=dev, domain="coldchain", profile="fridge")
    t1 = datetime.now(UTC) - timedelta(minutes=5)

    def parsed(body: bytes, received: datetime, *, dup: bool) -> ParsedMessage:
        msg = RawMessage(topic, body, received, mid=1, qos=1, dup=dup)
        if dup:  # what the intake spools keeps the flag
            (back,), _ = decode_all(encode(_spooled(Delivery(msg, 0), ParsedMessage())))
            assert back.flags & FLAG_DUP
        return parse_message(msg, now=datetime.now(UTC), lookup=lambda _d: info, limits=Limits())

    with_seq = b'{"seq": 7, "values": {"temp_c": 5.1, "door_open": 0}}'
    no_seq = b'{"values": {"temp_c": 5.2}}'
    async with Writer(dsn=pg_dsn) as writer:
        first = await writer.write([parsed(with_seq, t1, dup=False)], now=datetime.now(UTC))
        assert len(first.new_readings) == 2
        again = await writer.write(
            [parsed(with_seq, t1 + timedelta(seconds=40), dup=True)], now=datetime.now(UTC)
        )
        assert again.new_readings == []
        # A redelivery whose first delivery was never stored (a crash before COMMIT).
        lost = b'{"seq": 8, "values": {"temp_c": 5.3}}'
        saved = await writer.write(
            [parsed(lost, t1 + timedelta(seconds=60), dup=True)], now=datetime.now(UTC)
        )
        assert [r.value for r in saved.new_readings] == [5.3]
        # No seq: the copy cannot be told from a new reading (documented limitation).
        await writer.write(
            [parsed(no_seq, t1 + timedelta(seconds=90), dup=False)], now=datetime.now(UTC)
        )
        copy = await writer.write(
            [parsed(no_seq, t1 + timedelta(seconds=120), dup=True)], now=datetime.now(UTC)
        )
        assert len(copy.new_readings) == 1

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT seq, count(*) FROM readings WHERE device_id = %s AND metric = 'temp_c'"
            " GROUP BY seq ORDER BY seq NULLS LAST",
            (dev,),
        )
        assert await cur.fetchall() == [(7, 1), (8, 1), (None, 2)]
