"""Scale-out: ingest workers (`healthmon ingest` processes, alert engine wired in) on a
shared subscription; one is SIGKILLed mid-stream and restarted with its client id.

What Mosquitto 2.0.11 does (asserted below): the messages it had already sent to the
killed worker and not had acknowledged (up to the worker's Receive Maximum) stay with
that worker's persistent session; they are not handed to the other member of the
share group, and arrive when a worker with the same client id reconnects. So a killed
worker must be restarted with its client id (or its session left to expire, which
loses them): the deployment runs workers under a supervisor with fixed client ids.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from pathlib import Path

from tests.mqtt_helpers import register_device, scalar, wait_for
from tests.reliability_support import (
    T0,
    Broker,
    RetryingPublisher,
    duplicates_of,
    readings_of,
    stream,
)
from tests.test_reliability_db import _env, _start

DEVICES = 10
PER_DEVICE = 150  # one a minute of event time: 2.5 h at 12 °C, one heat episode each


async def _eq(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await coro == n)


async def _gt(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await coro > n)


async def _settled(dsn: str, prefix: str, quiet_s: float = 2.0) -> int:
    last = -1
    while (n := await readings_of(dsn, prefix)) != last:
        last = n
        await asyncio.sleep(quiet_s)
    return n


async def test_worker_killed_mid_stream_loses_nothing_duplicates_nothing_one_alert_per_episode(
    pg_dsn: str,
    tmp_path: Path,
    uid,  # type: ignore[no-untyped-def]
) -> None:
    prefix = uid("rel-so")
    devs = [f"{prefix}-{i}" for i in range(DEVICES)]
    for d in devs:
        await register_device(pg_dsn, d, "coldchain", profile="fridge")
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 100000")
    broker.start()
    group = f"g{uuid.uuid4().hex[:6]}"
    workers: dict[str, subprocess.Popen[bytes]] = {}
    envs = {}
    for name in ("a", "b"):
        env = _env(pg_dsn, broker, f"hm-{group}-{name}", tmp_path / f"spool-{name}")
        env["HEALTHMON_MQTT_SHARE_GROUP"] = group
        envs[name] = env
        workers[name] = _start(env, tmp_path / f"{name}.log")
    try:
        for name in workers:
            log = tmp_path / f"{name}.log"
            await wait_for(lambda log=log: "connected to" in log.read_text(), timeout_s=30)
        messages = [
            (
                f"hm/v1/coldchain/{d}/telemetry",
                {"ts": T0 + i * 60_000, "seq": i, "values": {"temp_c": 12.0, "rh_pct": 50}},
            )
            for i in range(PER_DEVICE)
            for d in devs
        ]
        total = len(messages) * 2
        pub = RetryingPublisher(*broker.address)
        sender = stream(pub, messages, pace_s=0.01)
        await wait_for(lambda: _gt(readings_of(pg_dsn, prefix), 400), timeout_s=30)
        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait(10)
        await asyncio.to_thread(sender.join, 90)
        pub.close()
        # Worker b takes what it is given, then the count stands still...
        before_restart = await _settled(pg_dsn, prefix)
        held_for_a = total - before_restart
        print(f"held back with the killed worker's session: {held_for_a} readings")
        # ...but what was in flight to a stays with a's session until a returns.
        workers["a"] = _start(envs["a"], tmp_path / "a.log")
        await wait_for(lambda: _eq(readings_of(pg_dsn, prefix), total), timeout_s=60)
        assert held_for_a > 0, "Mosquitto handed a's in-flight messages to b"
        assert await duplicates_of(pg_dsn, prefix) == 0
        heat = await scalar(
            pg_dsn,
            "SELECT array_agg(n) FROM (SELECT count(*) AS n FROM alerts"
            " WHERE device_id LIKE %s AND rule_id = 'coldchain.heat' GROUP BY device_id) c",
            (prefix + "%",),
        )
        assert sorted(heat or []) == [1] * DEVICES  # one alert per episode per device
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
        broker.stop()
