"""Broker outage and restart: a persistent Mosquitto the test restarts mid-stream; the
intake reconnects with backoff, resubscribes, resumes its session, and loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.mqtt_helpers import register_device, wait_for
from tests.reliability_support import Broker, RetryingPublisher, duplicates_of, readings_of, stream
from tests.test_reliability_db import settings_for, start_ingest, telemetry

__all__ = ["start_ingest"]  # the fixture, re-exported for pytest


async def _eq(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await coro == n)


async def _gt(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await coro > n)


async def test_broker_restart_mid_stream_resumes_the_session_and_loses_nothing(
    pg_dsn: str,
    start_ingest,
    tmp_path: Path,
    uid,  # type: ignore[no-untyped-def]
) -> None:
    dev = uid("rel-brk")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    # The queue limit as production sets it (deploy/): while we reconnect, a publisher
    # that is back first could fill our session's queue past Mosquitto's default of
    # 1000, beyond which the broker itself drops QoS 1 messages ("Outgoing messages
    # are being dropped", checked below) - a broker setting, not the intake's doing.
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 100000")
    broker.start()
    try:
        pipeline = await start_ingest(
            settings_for(pg_dsn, broker, mqtt_reconnect_min_s=1, mqtt_reconnect_max_s=2)
        )
        pub = RetryingPublisher(*broker.address)
        sender = stream(pub, telemetry(dev, 2500), pace_s=0.01)
        await wait_for(lambda: _gt(readings_of(pg_dsn, dev), 600), timeout_s=30)
        await asyncio.to_thread(broker.restart, 1.5)  # SIGTERM: sessions saved to disk
        await wait_for(lambda: pipeline.intake.stats.connects >= 2, timeout_s=20)
        await asyncio.to_thread(sender.join, 90)
        await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 5000), timeout_s=40)
        assert "dropped" not in (broker.directory / "mosquitto.log").read_text()
        pub.close()
        stats = pipeline.intake.stats
        assert stats.disconnects >= 1
        assert stats.sessions_resumed >= 1  # the persistent session came back with the broker
        assert await duplicates_of(pg_dsn, dev) == 0
        assert await readings_of(pg_dsn, dev) == 5000
    finally:
        broker.stop()


async def test_broker_down_at_length_then_back_delivers_what_was_queued_for_us(
    pg_dsn: str,
    start_ingest,
    tmp_path: Path,
    uid,  # type: ignore[no-untyped-def]
) -> None:
    """Messages queued for our session while we were disconnected survive a broker
    restart (persistence) and arrive once the intake has reconnected by itself."""
    dev = uid("rel-brk2")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        pipeline = await start_ingest(
            settings_for(pg_dsn, broker, mqtt_reconnect_min_s=1, mqtt_reconnect_max_s=2)
        )
        pipeline.intake.pause()  # stop taking messages: they queue at the broker for us
        pub = RetryingPublisher(*broker.address)
        stream(pub, telemetry(dev, 300)).join()
        pub.close()
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(3)  # several reconnect attempts fail meanwhile
        assert not pipeline.intake.connected
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: pipeline.intake.connected, timeout_s=20)
        assert pipeline.intake.stats.sessions_resumed >= 1
        await wait_for(lambda: _eq(readings_of(pg_dsn, dev), 600), timeout_s=30)
    finally:
        broker.stop()
