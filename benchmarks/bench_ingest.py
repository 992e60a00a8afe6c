"""Sustained end-to-end intake, next to two ceilings measured in the same run.

    python benchmarks/bench_ingest.py [--messages 60000] [--devices 200] [--inflight 20,1000]
                                      [--batch-rows 5000] [--soak-s 0]

1. bare subscriber: a paho-mqtt subscriber at QoS 1 that only receives and parses
   (orjson) the same messages: the ceiling of the broker + client library here;
2. bare COPY: the same rows written by psycopg binary COPY into `readings`;
3. the pipeline: `healthmon ingest` as its own process, from the first publish to the
   last committed row (polled by count).

Each runs against a Mosquitto of our own on a free port (deploy/mosquitto-bench.conf,
large queues, in-flight window as given) and a throwaway database on the machine's
PostgreSQL. The publisher is a separate process, on the same machine. Results are
printed and appended to benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import migrate  # noqa: E402

ADMIN = os.environ.get("HEALTHMON_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(inflight: int, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = (ROOT / "deploy" / "mosquitto-bench.conf").read_text()
    conf = conf.replace("@PORT@", str(port)).replace("@INFLIGHT@", str(inflight))
    path = tmp / f"mosquitto-{port}.conf"
    path.write_text(conf)
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [exe, "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("benchmark broker did not start")


def message(i: int, devices: int) -> tuple[str, bytes]:
    dev = f"bench-{i % devices:05d}"
    ts = T0 + timedelta(seconds=i // devices)
    body = {
        "ts": ts.isoformat(),
        "seq": i,
        "values": {"temp_c": 4.0 + (i % 7) / 10, "battery_v": 3.6},
    }
    return f"hm/v1/coldchain/{dev}/telemetry", orjson.dumps(body)


def publisher(port: int, n: int, devices: int, ready: object) -> None:
    """Publish n QoS 1 messages as fast as the broker takes them."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(3)}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = []
    for i in range(n):
        topic, body = message(i, devices)
        infos.append(c.publish(topic, body, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def bare_subscriber(port: int, n: int, out: object) -> None:
    """Receive n messages at QoS 1 and parse each; report (first, last) receive times."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": 0.0, "cpu1": 0.0}

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        orjson.loads(msg.payload)
        if state["n"] == 0:
            state["first"] = time.monotonic()
            state["cpu0"] = time.process_time()
        state["n"] += 1
        state["last"] = time.monotonic()
        state["cpu1"] = time.process_time()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe("hm/v1/+/+/+", qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 600
    while state["n"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    c.loop_stop()
    cpu_per_msg = (state["cpu1"] - state["cpu0"]) / max(1, state["n"] - 1)
    out.put((state["n"], state["first"], state["last"], cpu_per_msg))  # type: ignore[attr-defined]


def run_bare_subscriber(n: int, devices: int, inflight: int, tmp: Path) -> tuple[float, float]:
    """(messages/s, CPU seconds per message of the subscriber process)."""
    broker, port = start_broker(inflight, tmp)
    try:
        q: mp.Queue[tuple[int, float, float, float]] = mp.Queue()
        sub = mp.Process(target=bare_subscriber, args=(port, n, q))
        sub.start()
        time.sleep(1.0)
        t_pub = time.monotonic()
        pub = mp.Process(target=publisher, args=(port, n, devices, None))
        pub.start()
        got, _first, last, cpu = q.get(timeout=900)
        pub.join()
        sub.join()
        return got / (last - t_pub), cpu
    finally:
        broker.terminate()
        broker.wait()


def rows_for(n: int, devices: int) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        dev = f"bench-{i % devices:05d}"
        ts = T0 + timedelta(seconds=i // devices)
        rows.append((ts, dev, "temp_c", 4.0 + (i % 7) / 10, i, now, False))
        rows.append((ts, dev, "battery_v", 3.6, i, now, False))
    return rows


async def run_bare_copy(dsn: str, n: int, devices: int) -> float:
    rows = rows_for(n, devices)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        t = time.monotonic()
        async with (
            conn.cursor() as cur,
            cur.copy(
                "COPY readings (ts, device_id, metric, value, seq, received_at, ts_estimated)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["timestamptz", "text", "text", "float8", "int8", "timestamptz", "bool"])
            for row in rows:
                await copy.write_row(row)
        await conn.commit()
        elapsed = time.monotonic() - t
        await conn.execute("TRUNCATE readings")
        await conn.commit()
    return n / elapsed  # messages' worth of rows per second


async def count_rows(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM readings")
        return int((await cur.fetchone())[0])  # type: ignore[index]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def start_intake(
    dsn: str, port: int, client_id: str, tmp: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """`healthmon ingest` as its own process, returned once it has subscribed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(
        HEALTHMON_DATABASE_URL=dsn,
        HEALTHMON_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        HEALTHMON_MQTT_CLIENT_ID=client_id,
        HEALTHMON_DEVICE_RATE_LIMIT_PER_S="0",
        **{f"HEALTHMON_{k.upper()}": v for k, v in settings.items()},
    )
    path = tmp / f"{client_id}.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "ingest"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    for _ in range(400):
        if b"connected to" in path.read_bytes():
            return proc
        await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the intake did not start: {path.read_text()[-2000:]}")


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(30)


async def run_pipeline(
    dsn: str,
    n: int,
    devices: int,
    inflight: int,
    batch_rows: int,
    tmp: Path,
    alerts: bool = True,
) -> tuple[float, list[float], float]:
    """(messages/s, RSS samples in MB, CPU seconds per message of the intake process)."""
    broker, port = start_broker(inflight, tmp)
    try:
        proc = await start_intake(
            dsn,
            port,
            "bench-ingest",
            tmp,
            batch_max_rows=str(batch_rows),
            mqtt_receive_maximum="65535",
            evaluate_alerts=str(alerts).lower(),
        )
    except BaseException:
        stop(broker)
        raise
    rss: list[float] = []
    try:
        t_pub = time.monotonic()
        cpu0 = cpu_s(proc.pid)
        pub = mp.Process(target=publisher, args=(port, n, devices, None))
        pub.start()
        expected = 2 * n
        got = 0
        while got < expected:
            await asyncio.sleep(0.05)
            got = await count_rows(dsn)
            rss.append(rss_mb(proc.pid))
            if time.monotonic() - t_pub > 900:
                raise RuntimeError(f"pipeline stalled at {got}/{expected} rows")
        elapsed = time.monotonic() - t_pub
        cpu = cpu_s(proc.pid) - cpu0
        pub.join()
        return n / elapsed, rss, cpu / n
    finally:
        stop(proc, broker)


async def soak(dsn: str, seconds: float, rate: int, devices: int, tmp: Path) -> list[float]:
    """Publish at a fixed rate for `seconds`; sample the intake's memory each 5 s."""
    broker, port = start_broker(1000, tmp)
    try:
        proc = await start_intake(dsn, port, "bench-soak", tmp)
    except BaseException:
        stop(broker)
        raise
    samples: list[float] = []
    try:
        chunk = rate * 5
        i = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            pub = mp.Process(target=_publish_range, args=(port, i, chunk, devices))
            pub.start()
            await asyncio.to_thread(pub.join)
            i += chunk
            samples.append(rss_mb(proc.pid))
            await asyncio.sleep(max(0.0, 5 - (time.monotonic() - t)))
        return samples
    finally:
        stop(proc, broker)


def _paced(port: int, rate: float, n: int, devices: int, sent: object) -> None:
    """Publish n messages at `rate` per second; put (seq, wall time) of each on `sent`."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"lat-{secrets.token_hex(3)}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    start = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        topic, body = message(1_000_000 + i, devices)
        t = time.time()
        c.publish(topic, body, qos=1).wait_for_publish(10)
        sent.put((1_000_000 + i, t))  # type: ignore[attr-defined]
    c.disconnect()
    c.loop_stop()


async def latency(dsn: str, rate: float, seconds: float, devices: int, tmp: Path) -> list[float]:
    """Publish -> committed row at a low rate, alert rules on (the default): seconds per
    message, the row's arrival seen by polling the database every 5 ms."""
    broker, port = start_broker(1000, tmp)
    try:
        proc = await start_intake(dsn, port, "bench-latency", tmp)
    except BaseException:
        stop(broker)
        raise
    n = int(rate * seconds)
    seen: dict[int, float] = {}
    try:
        q: mp.Queue[tuple[int, float]] = mp.Queue()
        pub = mp.Process(target=_paced, args=(port, rate, n, devices, q))
        pub.start()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + seconds + 30
            while len(seen) < n and time.monotonic() < deadline:
                cur = await conn.execute(
                    "SELECT DISTINCT seq FROM readings WHERE seq >= 1000000 AND NOT seq = ANY(%s)",
                    (list(seen),),
                )
                now = time.time()
                for (seq,) in await cur.fetchall():
                    seen[seq] = now
                await asyncio.sleep(0.005)
        await asyncio.to_thread(pub.join)
        sent = dict(q.get() for _ in range(n))
        return sorted(seen[k] - sent[k] for k in seen)
    finally:
        stop(proc, broker)


def _publish_range(port: int, start: int, n: int, devices: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{start}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(*message(i, devices), qos=1) for i in range(start, start + n)]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=60000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--inflight", default="20,1000", help="broker in-flight windows to try")
    ap.add_argument("--batch-rows", default="5000", help="writer batch sizes to try")
    ap.add_argument("--alerts", default="off,on", help="alert evaluation in the intake")
    ap.add_argument("--soak-s", type=float, default=0, help="also a soak run of this length")
    ap.add_argument("--soak-rate", type=int, default=2000)
    ap.add_argument("--latency-rate", type=float, default=20, help="0: no latency run")
    ap.add_argument("--latency-s", type=float, default=15)
    args = ap.parse_args()
    name = f"healthmon_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    lines: list[str] = []
    try:
        await migrate(dsn, retention_days=30)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("INSERT INTO sites (site_id, region) VALUES ('bench', 'bench')")
            await conn.execute(
                "INSERT INTO devices (device_id, domain, site_id, profile)"
                " SELECT 'bench-' || lpad(g::text, 5, '0'), 'coldchain', 'bench', 'fridge'"
                " FROM generate_series(0, %s - 1) g",
                (args.devices,),
            )
        n, d = args.messages, args.devices
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            copy_rate = await run_bare_copy(dsn, n, d)
            lines.append(
                f"| bare COPY (2 rows/message) | {copy_rate:,.0f} msg/s "
                f"({2 * copy_rate:,.0f} rows/s) | |"
            )
            for inflight in [int(x) for x in args.inflight.split(",")]:
                bare, bare_cpu = run_bare_subscriber(n, d, inflight, tmp)
                lines.append(
                    f"| bare paho subscriber, QoS 1, in-flight {inflight} | {bare:,.0f} msg/s | "
                    f"CPU {bare_cpu * 1e6:.0f} µs/msg |"
                )
                print(lines[-1], flush=True)
                for batch in [int(x) for x in args.batch_rows.split(",")]:
                    for alerts in [a == "on" for a in args.alerts.split(",")]:
                        rate, rss, cpu = await run_pipeline(dsn, n, d, inflight, batch, tmp, alerts)
                        async with await psycopg.AsyncConnection.connect(dsn) as conn:
                            await conn.execute(
                                "TRUNCATE readings, latest_readings, rule_state, alerts CASCADE"
                            )
                            await conn.commit()
                        lines.append(
                            f"| pipeline, in-flight {inflight}, batch {batch} rows, alert rules "
                            f"{'on' if alerts else 'off'} | "
                            f"{rate:,.0f} msg/s ({2 * rate:,.0f} readings/s) | "
                            f"**{rate / bare:.0%}** of bare subscriber; CPU {cpu * 1e6:.0f} "
                            f"µs/msg ({cpu / bare_cpu:.1f}× bare); RSS {min(rss):.0f}-"
                            f"{max(rss):.0f} MB |"
                        )
                        print(lines[-1], flush=True)
            if args.latency_rate:
                lat = await latency(dsn, args.latency_rate, args.latency_s, d, tmp)

                def pct(p: float) -> float:
                    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

                lines.append(
                    f"| publish -> committed row at {args.latency_rate:g} msg/s, rules on "
                    f"({len(lat)} messages) | p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, "
                    f"max {lat[-1] * 1000:.0f} ms | |"
                )
                print(lines[-1], flush=True)
            if args.soak_s:
                samples = await soak(dsn, args.soak_s, args.soak_rate, d, tmp)
                lines.append(
                    f"| soak {args.soak_s:.0f} s at {args.soak_rate} msg/s | RSS "
                    f"first {samples[0]:.0f} MB, last {samples[-1]:.0f} MB, "
                    f"max {max(samples):.0f} MB | |"
                )
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    header = (
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {n} messages, {d} devices, "
        f"2 readings/message, {os.cpu_count()} cores\n\n| what | rate | note |\n|---|---|---|"
    )
    text = header + "\n" + "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "ingest.md"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
