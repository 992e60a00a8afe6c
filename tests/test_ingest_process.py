"""The `healthmon` command as a process: crash safety, clean shutdown, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.mqtt_helpers import Publisher, register_device, scalar, wait_for

T0 = (int(time.time()) // 3600 - 24) * 3600 * 1000


def _env(pg_dsn: str, broker: tuple[str, int], client_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(
        HEALTHMON_DATABASE_URL=pg_dsn,
        HEALTHMON_MQTT_URL=f"mqtt://{broker[0]}:{broker[1]}",
        HEALTHMON_MQTT_CLIENT_ID=client_id,
        HEALTHMON_MQTT_SESSION_EXPIRY_S="300",
        HEALTHMON_RETENTION_DAYS="60",
        HEALTHMON_DEVICE_RATE_LIMIT_PER_S="0",
    )
    return env


def _start(env: dict[str, str], tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "healthmon.cli", "ingest"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )


def _cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healthmon.cli", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        input=stdin,
        check=False,
    )


async def _count(dsn: str, dev: str) -> int:
    return int(await scalar(dsn, "SELECT count(*) FROM readings WHERE device_id = %s", (dev,)))


async def test_sigkill_mid_stream_then_restart_stores_every_reading_exactly_once(
    pg_dsn, mqtt_broker, tmp_path, uid
):
    dev = uid("fridge")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    env = _env(pg_dsn, mqtt_broker, f"hm-crash-{uuid.uuid4().hex[:8]}")
    proc = _start(env, tmp_path, "first")
    await wait_for(lambda: "connected to" in (tmp_path / "first.log").read_text(), timeout_s=20)

    total = 900  # below the broker's default per-session queue of 1000 messages
    pub = Publisher(*mqtt_broker)
    sent = threading.Event()

    def stream() -> None:
        for i in range(total):
            pub.publish(
                f"hm/v1/coldchain/{dev}/telemetry",
                {"ts": T0 + i * 1000, "seq": i, "values": {"temp_c": 4.0, "rh_pct": 50}},
            )
            if i % 50 == 0:
                time.sleep(0.01)
        sent.set()

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    await wait_for(lambda: _gt(_count(pg_dsn, dev), 100), timeout_s=20)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed_at = await _count(pg_dsn, dev)
    assert killed_at < 2 * total, "the kill came too late to test anything"
    await wait_for(sent.is_set, timeout_s=60)
    pub.close()

    proc = _start(env, tmp_path, "second")
    try:
        await wait_for(lambda: _eq(_count(pg_dsn, dev), 2 * total), timeout_s=60)
        dupes = await scalar(
            pg_dsn,
            "SELECT count(*) FROM (SELECT 1 FROM readings WHERE"
            " device_id = %s GROUP BY metric, ts HAVING count(*) > 1) d",
            (dev,),
        )
        assert dupes == 0
        assert await _count(pg_dsn, dev) == 2 * total
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert "stopped cleanly" in (tmp_path / "second.log").read_text()


async def _gt(coro, n: int) -> bool:
    return bool(await coro > n)


async def _eq(coro, n: int) -> bool:
    return bool(await coro == n)


async def test_devices_import_then_readings_and_rejected_print_what_is_stored(
    pg_dsn, mqtt_broker, tmp_path, uid
):
    a, b = uid("tap"), uid("pool")
    env = _env(pg_dsn, mqtt_broker, f"hm-cli-{uuid.uuid4().hex[:8]}")
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(
        "device_id,domain,site_id,region,profile,expected_interval_s\n"
        f"{a},water,{a}-site,district-1,tap,300\n"
        f"{b},pool,{b}-site,district-2,,60\n"
    )
    out = _cli(env, "devices", "import", str(csv_file))
    assert out.returncode == 0, out.stderr
    assert "imported 2 devices" in out.stdout
    # Re-importing updates, it does not duplicate.
    csv_file.write_text(csv_file.read_text().replace(",tap,300", ",secondary_supply,600"))
    assert _cli(env, "devices", "import", str(csv_file)).returncode == 0
    row = await scalar(
        pg_dsn,
        "SELECT profile || ':' || expected_interval_s FROM devices WHERE device_id = %s",
        (a,),
    )
    assert row == "secondary_supply:600"
    assert (
        await scalar(pg_dsn, "SELECT region FROM sites WHERE site_id = %s", (f"{b}-site",))
        == "district-2"
    )

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "device_id,domain,site_id,region,profile,expected_interval_s\n"
        "ok-1,water,s,r,tap,60\nbad id,water,s,r,tap,60\n"
    )
    out = _cli(env, "devices", "import", str(bad))
    assert out.returncode == 2 and "line 3" in out.stderr
    assert await scalar(pg_dsn, "SELECT count(*) FROM devices WHERE device_id = 'ok-1'") == 0

    proc = _start(env, tmp_path, "cli")
    try:
        await wait_for(lambda: "connected to" in (tmp_path / "cli.log").read_text(), timeout_s=20)
        pub = Publisher(*mqtt_broker)
        pub.publish(
            f"hm/v1/water/{a}/telemetry",
            {"ts": T0, "values": {"free_chlorine_mgl": 0.4, "ph": 7.1}},
        )
        pub.publish(f"hm/v1/water/{a}/telemetry", {"ts": T0 + 60_000, "values": {"ph": 15}})
        pub.close()
        await wait_for(
            lambda: scalar(pg_dsn, "SELECT count(*) FROM rejected WHERE device_id = %s", (a,)),
            timeout_s=20,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0

    out = _cli(env, "readings", "--device", a, "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted((r["metric"], r["value"]) for r in rows) == [
        ("free_chlorine_mgl", 0.4),
        ("ph", 7.1),
    ]
    out = _cli(env, "readings", "--device", a, "--metric", "ph", "--format", "csv")
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ts,device_id,metric,value") and len(lines) == 2
    out = _cli(
        env, "rejected", "--device", a, "--reason", "out_of_physical_range", "--format", "json"
    )
    rej = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rej) == 1 and rej[0]["metric"] == "ph" and rej[0]["value"] == 15
    assert '"ph": 15' in rej[0]["payload_text"] or '"ph":15' in rej[0]["payload_text"]


async def test_ingest_refuses_to_start_against_an_unreachable_broker(pg_dsn, tmp_path):
    env = _env(pg_dsn, ("127.0.0.1", 1), "hm-nobroker")
    out = subprocess.run(
        [sys.executable, "-m", "healthmon.cli", "ingest"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "cannot reach the broker" in out.stderr
