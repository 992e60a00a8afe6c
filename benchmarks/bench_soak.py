"""Soak: `healthmon ingest` at a fraction of its measured capacity, with periodic faults.

    python benchmarks/bench_soak.py [--minutes 30] [--db-every-s 300] [--broker-every-s 420]
                                    [--load 0.5] [--devices 200]

Everything runs on servers of its own: a PostgreSQL 15 cluster in a temp directory on a
free port (initdb/pg_ctl as the `postgres` user when run as root), a persistent
Mosquitto (deploy/mosquitto-test-persistent.conf, production queue settings), and the
intake as its own process with a disk spool. First the intake's capacity is measured
(a burst, publish to last committed row); then the publisher runs at `--load` of it
while the database is restarted every `--db-every-s` and the broker every
`--broker-every-s`. Reported: messages published (acknowledged by the broker) vs
readings stored (must be equal: 2 readings per message), peak RSS of the intake,
and per fault the recovery time (fault start -> every reading published before the
fault's end is stored). Appended to benchmarks/results/soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import migrate  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A throwaway cluster: start, stop (fast shutdown), restart."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "pg"
        self.port = free_port()
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres")
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust",
                          "-U", "postgres"]),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c fsync=on -c max_connections=50"
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-o", opts,
                          "-l", str(self.dir / "log"), "-w", "start"]),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w",
                          "stop"]),
            check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip


class Broker:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "broker"
        self.dir.mkdir()
        self.port = free_port()
        conf = (ROOT / "deploy" / "mosquitto-test-persistent.conf").read_text()
        extra = "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 1073741824"
        conf = conf.replace("@PORT@", str(self.port)).replace("@DIR@", str(self.dir))
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(conf.replace("@EXTRA@", extra))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)])
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@dataclass
class Publisher:
    """QoS 1 publisher at a steady rate; counts what the broker acknowledged and
    re-publishes (same message, same key) whatever a broker restart left unacknowledged."""

    port: int
    devices: int
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    _mids: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-pub-{uuid.uuid4().hex[:6]}"
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def message(self, i: int) -> tuple[str, bytes]:
        dev = f"soak-{i % self.devices:05d}"
        ts = T0 + timedelta(milliseconds=10 * i)
        body = {"ts": ts.isoformat(), "seq": i, "values": {"temp_c": 4.5, "battery_v": 3.6}}
        return f"hm/v1/coldchain/{dev}/telemetry", orjson.dumps(body)

    def publish(self, i: int) -> None:
        topic, body = self.message(i)
        info = self.client.publish(topic, body, qos=1)
        with self._lock:
            self._mids[info.mid] = i
        self.sent = max(self.sent, i + 1)

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        with self._lock:
            i = self._mids.pop(mid, None)
            if i is not None:
                self.acked.add(i)

    def run(self, rate: float, stop: threading.Event, start_i: int = 0) -> None:
        i, started = start_i, time.monotonic()
        while not stop.is_set():
            due = start_i + int((time.monotonic() - started) * rate)
            while i < due:
                self.publish(i)
                i += 1
            time.sleep(0.005)

    def republish_missing(self) -> int:
        missing = [i for i in range(self.sent) if i not in self.acked]
        for i in missing:
            topic, body = self.message(i)
            info = self.client.publish(topic, body, qos=1)
            info.wait_for_publish(30)
            if info.is_published():
                self.acked.add(i)
        return len(missing)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count(dsn: str) -> int | None:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return None


def rss_mb(pid: int, key: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start_ingest(pg: Postgres, broker: Broker, tmp: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(
        HEALTHMON_DATABASE_URL=pg.dsn,
        HEALTHMON_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
        HEALTHMON_MQTT_CLIENT_ID="soak-ingest",
        HEALTHMON_MQTT_RECEIVE_MAXIMUM="1000",
        HEALTHMON_RETENTION_DAYS="60",
        HEALTHMON_DEVICE_RATE_LIMIT_PER_S="0",
        HEALTHMON_SPOOL_DIR=str(tmp / "spool"),
        HEALTHMON_DB_RETRY_BASE_S="0.2",
        HEALTHMON_DB_RETRY_CAP_S="2",
        HEALTHMON_DB_CONNECT_TIMEOUT_S="2",
        HEALTHMON_MQTT_RECONNECT_MIN_S="1",
        HEALTHMON_MQTT_RECONNECT_MAX_S="4",
        HEALTHMON_RUN_NOTIFIER="false",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "healthmon.cli", "ingest"],
        env=env,
        stdout=(tmp / "ingest.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def register_devices(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, region) VALUES ('soak', 'r') ON CONFLICT DO NOTHING"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, domain, site_id, profile)"
                " VALUES (%s, 'coldchain', 'soak', 'fridge') ON CONFLICT DO NOTHING",
                [(f"soak-{i:05d}",) for i in range(n)],
            )


def wait_stored(dsn: str, target: int, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        n = count(dsn)
        if n is not None and n >= target:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--db-every-s", type=float, default=300)
    ap.add_argument("--broker-every-s", type=float, default=420)
    ap.add_argument("--db-down-s", type=float, default=5)
    ap.add_argument("--broker-down-s", type=float, default=3)
    ap.add_argument("--load", type=float, default=0.5)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--burst", type=int, default=40000, help="messages for the capacity run")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="healthmon-soak-"))
    os.chmod(tmp, 0o755)
    pg, broker = Postgres(tmp), Broker(tmp)
    pg.start()
    broker.start()
    asyncio.run(migrate(pg.dsn, retention_days=60))
    register_devices(pg.dsn, args.devices)
    ingest = start_ingest(pg, broker, tmp)
    time.sleep(3)
    pub = Publisher(broker.port, args.devices)
    peak_rss = 0.0
    rss_stop = threading.Event()

    def sample_rss() -> None:
        nonlocal peak_rss
        while not rss_stop.wait(0.5):
            peak_rss = max(peak_rss, rss_mb(ingest.pid))

    threading.Thread(target=sample_rss, daemon=True).start()
    faults: list[tuple[str, float, float, float | None]] = []
    try:
        # 1. capacity: a burst, first publish -> last committed row
        t = time.monotonic()
        for i in range(args.burst):
            pub.publish(i)
            if i % 1000 == 999:
                time.sleep(0.001)
        took = wait_stored(pg.dsn, 2 * args.burst, 300)
        assert took is not None, "capacity burst never finished"
        capacity = args.burst / (time.monotonic() - t)
        rate = capacity * args.load
        print(f"capacity {capacity:.0f} msg/s; soak at {rate:.0f} msg/s", flush=True)

        # 2. soak with faults
        stop = threading.Event()
        feeder = threading.Thread(target=pub.run, args=(rate, stop, args.burst), daemon=True)
        started = time.monotonic()
        feeder.start()
        end = started + args.minutes * 60
        next_db, next_broker = started + args.db_every_s, started + args.broker_every_s
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_db or now >= next_broker:
                kind = "database" if next_db <= next_broker else "broker"
                t_fault = time.monotonic()
                if kind == "database":
                    pg.stop()
                    time.sleep(args.db_down_s)
                    pg.start()
                    next_db += args.db_every_s
                else:
                    broker.stop()
                    time.sleep(args.broker_down_s)
                    broker.start()
                    next_broker += args.broker_every_s
                back = time.monotonic()
                target = 2 * pub.sent
                rec = wait_stored(pg.dsn, target, 240)
                recovery = None if rec is None else back + rec - t_fault
                faults.append((kind, t_fault - started, back - t_fault, recovery))
                print(
                    f"{kind} fault at {t_fault - started:.0f} s, down {back - t_fault:.1f} s,"
                    f" recovered after {recovery if recovery is None else round(recovery, 1)} s",
                    flush=True,
                )
                continue
            time.sleep(0.5)
        stop.set()
        feeder.join(10)
        soak_s = time.monotonic() - started
        time.sleep(2)
        missing = pub.republish_missing()
        published = len(pub.acked)
        wait_stored(pg.dsn, 2 * published, 300)
        time.sleep(3)
        stored = count(pg.dsn) or 0
        hwm = rss_mb(ingest.pid, "VmHWM:")
    finally:
        rss_stop.set()
        ingest.terminate()
        try:
            ingest.wait(30)
        except subprocess.TimeoutExpired:
            ingest.kill()
        pub.close()
        broker.stop()
        pg.stop()
    ok = stored == 2 * published
    lines = [
        f"\n## Soak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({args.minutes:g} min)\n",
        f"- capacity (burst of {args.burst} messages, publish -> committed):"
        f" {capacity:.0f} msg/s; soak load {args.load:.0%}: {rate:.0f} msg/s"
        f" ({args.devices} devices, 2 readings a message)",
        f"- faults: database restart every {args.db_every_s:g} s (down {args.db_down_s:g} s),"
        f" broker restart every {args.broker_every_s:g} s (down {args.broker_down_s:g} s);"
        f" soak ran {soak_s:.0f} s",
        f"- messages published (acknowledged by the broker): {published}"
        f" ({missing} re-published after a broker restart left them unacknowledged)",
        f"- readings stored: {stored}, expected {2 * published}: {'EQUAL' if ok else 'MISMATCH'}",
        f"- peak RSS of the intake: {max(peak_rss, hwm):.0f} MiB",
        "",
        "| fault | at (s) | down (s) | recovery (s, fault start -> backlog stored) |",
        "|---|---|---|---|",
        *[
            f"| {k} | {at:.0f} | {down:.1f} | {'-' if r is None else f'{r:.1f}'} |"
            for k, at, down, r in faults
        ],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / "soak.md"
    if not out.exists():
        out.write_text("# Soak results (benchmarks/bench_soak.py)\n")
    with out.open("a") as f:
        f.write(text)
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
