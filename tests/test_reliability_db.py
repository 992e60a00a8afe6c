"""Database outages, cut at the transport by a TCP proxy between the intake and the
machine's PostgreSQL; the broker is a Mosquitto of the test's own with default queue
settings (max_queued_messages 1000), so an outage longer than that needs the spool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from healthmon.app import build_ingest
from healthmon.settings import Settings
from ingest import RawMessage
from ingest.pipeline import Ingest
from ingest.spool import Spool, SpooledMessage
from tests.mqtt_helpers import register_device, wait_for
from tests.reliability_support import (
    T0,
    Broker,
    RetryingPublisher,
    duplicates_of,
    readings_of,
    stream,
)
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def db_proxy(pg_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the test database and the DSN that goes through it."""
    parts = urlsplit(pg_dsn)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        yield proxy, parts._replace(netloc=netloc).geturl()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def settings_for(dsn: str, broker: Broker, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": dsn,
        "mqtt_url": f"mqtt://127.0.0.1:{broker.port}",
        "mqtt_client_id": f"hm-rel-{uuid.uuid4().hex[:8]}",
        "mqtt_session_expiry_s": 300,
        "retention_days": 60,
        "flush_interval_s": 0.05,
        "device_rate_limit_per_s": 0,
        "db_retry_base_s": 0.05,
        "db_retry_cap_s": 0.5,
        "db_connect_timeout_s": 2,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
async def start_ingest() -> AsyncIterator[Callable[[Settings], Any]]:
    running: list[tuple[Ingest, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> Ingest:
        pipeline = build_ingest(settings)
        await pipeline.__aenter__()
        running.append((pipeline, asyncio.create_task(pipeline.run(), name="test.ingest")))
        return pipeline

    yield start
    for pipeline, task in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pipeline.__aexit__(None, None, None)


def telemetry(dev: str, n: int, start: int = 0) -> list[tuple[str, Any]]:
    return [
        (
            f"hm/v1/coldchain/{dev}/telemetry",
            {"ts": T0 + i * 1000, "seq": i, "values": {"temp_c": 4.0, "rh_pct": 50}},
        )
        for i in range(start, start + n)
    ]


async def _at_least(coro: Any, n: int) -> bool:
    return bool(await coro >= n)


async def _eq(coro: Any, n: int) -> bool:
    return bool(await coro == n)


async def test_outage_longer_than_the_broker_queue_is_spooled_and_stored_once(
    pg_dsn, db_proxy, broker, start_ingest, tmp_path, uid
):
    proxy, dsn = db_proxy
    dev = uid("rel-spool")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    spool_dir = tmp_path / "spool"
    pipeline = await start_ingest(settings_for(dsn, broker, spool_dir=spool_dir))
    pub = RetryingPublisher(*broker.address)
    stream(pub, telemetry(dev, 200)).join()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 400), timeout_s=20)

    proxy.cut()
    # 1500 messages while the database is away: more than the broker's 1000-message
    # queue for our session, so only the spool keeps them.
    stream(pub, telemetry(dev, 1500, start=200)).join()
    await wait_for(lambda: pipeline.intake.stats.acked >= 1700, timeout_s=30)
    assert pipeline.spool is not None and pipeline.spool.pending
    assert pipeline.spool.spooled_total >= 1500
    assert await readings_of(pg_dsn, dev) == 400  # nothing reached the database meanwhile
    assert list(spool_dir.glob("*.seg"))

    proxy.restore()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 3400), timeout_s=30)
    await wait_for(lambda: not pipeline.spool.pending, timeout_s=10)  # type: ignore[union-attr]
    assert not list(spool_dir.glob("*.seg")), "replayed segments are deleted"
    # New messages go straight to the database again.
    stream(pub, telemetry(dev, 50, start=1700)).join()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 3500), timeout_s=20)
    pub.close()
    assert await duplicates_of(pg_dsn, dev) == 0
    assert pipeline.db_retries >= 1


async def test_outage_without_spool_holds_acknowledgements_and_loses_nothing(
    pg_dsn, db_proxy, broker, start_ingest, uid
):
    proxy, dsn = db_proxy
    dev = uid("rel-hold")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    pipeline = await start_ingest(settings_for(dsn, broker))
    pub = RetryingPublisher(*broker.address)
    proxy.cut()
    stream(pub, telemetry(dev, 600)).join()  # within the broker's queue (1000)
    await asyncio.sleep(1.0)
    assert pipeline.intake.stats.acked == 0  # nothing acknowledged while nothing is stored
    assert not pipeline.db_healthy
    proxy.restore()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 1200), timeout_s=30)
    pub.close()
    assert await duplicates_of(pg_dsn, dev) == 0


async def test_full_spool_stops_acknowledging_and_the_broker_keeps_the_rest(
    pg_dsn, db_proxy, broker, start_ingest, tmp_path, uid
):
    proxy, dsn = db_proxy
    dev = uid("rel-full")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    # About 100 messages' worth of spool: the rest must wait at the broker.
    pipeline = await start_ingest(
        settings_for(
            dsn, broker, spool_dir=tmp_path / "spool", spool_max_bytes=20_000,
            spool_segment_bytes=4_000,
        )
    )  # fmt: skip
    pub = RetryingPublisher(*broker.address)
    proxy.cut()
    stream(pub, telemetry(dev, 700)).join()
    await asyncio.sleep(1.5)
    spool = pipeline.spool
    assert spool is not None
    acked = pipeline.intake.stats.acked
    assert 0 < acked < 700, acked  # acknowledged what fitted in the spool, no more
    assert spool.size_bytes <= 20_000 + 4_000
    proxy.restore()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 1400), timeout_s=40)
    pub.close()
    assert await duplicates_of(pg_dsn, dev) == 0


def _env(dsn: str, broker: Broker, client_id: str, spool_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(
        HEALTHMON_DATABASE_URL=dsn,
        HEALTHMON_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
        HEALTHMON_MQTT_CLIENT_ID=client_id,
        HEALTHMON_MQTT_SESSION_EXPIRY_S="300",
        HEALTHMON_RETENTION_DAYS="60",
        HEALTHMON_DEVICE_RATE_LIMIT_PER_S="0",
        HEALTHMON_SPOOL_DIR=str(spool_dir),
        HEALTHMON_DB_RETRY_BASE_S="0.05",
        HEALTHMON_DB_RETRY_CAP_S="0.5",
        HEALTHMON_DB_CONNECT_TIMEOUT_S="2",
        HEALTHMON_RUN_NOTIFIER="false",
        HEALTHMON_FLUSH_INTERVAL_S="0.05",
    )
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "healthmon.cli", "ingest"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=log.parent,
    )


async def test_worker_killed_during_an_outage_replays_its_spool_at_restart(
    pg_dsn, db_proxy, broker, tmp_path, uid
):
    """SIGKILL while the spool holds acknowledged messages; `healthmon ingest` replays
    the leftover spool when it starts again (through a proxy the test cuts)."""
    proxy, dsn = db_proxy
    dev = uid("rel-crash")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    spool_dir, log = tmp_path / "spool", tmp_path / "worker.log"
    env = _env(dsn, broker, f"hm-crash-{uuid.uuid4().hex[:8]}", spool_dir)
    proc = _start(env, log)
    try:
        await wait_for(lambda: "connected to" in log.read_text(), timeout_s=20)
        proxy.cut()
        pub = RetryingPublisher(*broker.address)
        stream(pub, telemetry(dev, 1200)).join()  # all acknowledged by the broker's view
        pub.close()
        await wait_for(lambda: sum(p.stat().st_size for p in spool_dir.glob("*.seg")) > 100_000)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await readings_of(pg_dsn, dev) == 0
    proxy.restore()
    proc = _start(env, log)
    try:
        await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 2400), timeout_s=40)
        await wait_for(lambda: not list(spool_dir.glob("*.seg")), timeout_s=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "from a previous run; replaying" in text
    assert await duplicates_of(pg_dsn, dev) == 0


async def test_leftover_spool_with_a_torn_tail_and_a_replayed_part_is_stored_once(
    pg_dsn, broker, tmp_path, uid
):
    """A crash mid-append leaves a torn record (never acknowledged); a crash mid-replay
    leaves a segment partly committed. Both replay cleanly: each reading stored once."""
    dev = uid("rel-torn")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    spool_dir = tmp_path / "spool"
    now = datetime.now(UTC)
    msgs = [SpooledMessage(t, orjson.dumps(b), now) for t, b in telemetry(dev, 300)]
    async with Spool(spool_dir, segment_max_bytes=10_000) as spool:
        for i in range(0, 300, 50):
            await spool.append(msgs[i : i + 50])
    segs = sorted(spool_dir.glob("*.seg"))
    with segs[-1].open("ab") as f:
        f.write(b"\x00\x00\x01\x00torn")
    # The first 100 messages were already committed before the "crash".
    settings = settings_for(pg_dsn, broker)
    pre = build_ingest(settings)
    async with pre:
        items = [await pre._parse_raw(_raw(m), rate_limited=False) for m in msgs[:100]]
        await pre.writer.write(items, now=now)
    assert await readings_of(pg_dsn, dev) == 200
    log = tmp_path / "worker.log"
    proc = _start(_env(pg_dsn, broker, f"hm-torn-{uuid.uuid4().hex[:8]}", spool_dir), log)
    try:
        await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 600), timeout_s=30)
        await wait_for(lambda: not list(spool_dir.glob("*.seg")), timeout_s=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert "torn bytes at the end ignored" in log.read_text()


def _raw(m: SpooledMessage) -> RawMessage:
    return RawMessage(m.topic, m.payload, m.received_at, qos=1)


async def test_a_full_intake_queue_stops_reading_the_broker_and_loses_nothing(
    pg_dsn, db_proxy, broker, start_ingest, uid
):
    """Backpressure: with the database gone the intake's queue fills to its bound, it
    stops reading the broker's socket (the rest waits at the broker, unacknowledged),
    and once the database is back it reads again and stores every reading once."""
    proxy, dsn = db_proxy
    dev = uid("rel-queue")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    pipeline = await start_ingest(
        settings_for(dsn, broker, queue_max_messages=40, batch_max_rows=20)
    )
    pub = RetryingPublisher(*broker.address)
    proxy.cut()
    stream(pub, telemetry(dev, 400)).join()  # within the broker's queue (1000)
    await wait_for(lambda: pipeline.intake.stats.read_pauses >= 1, timeout_s=10)
    await asyncio.sleep(0.5)
    assert pipeline.intake.queue_depth() <= 40
    assert pipeline.intake.stats.received < 400  # the rest is still at the broker
    assert pipeline.intake.stats.acked == 0
    proxy.restore()
    await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 800), timeout_s=30)
    pub.close()
    assert await duplicates_of(pg_dsn, dev) == 0
