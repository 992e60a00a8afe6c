"""Publish-to-notification latency under load, and the cost of rule evaluation per reading.

    python benchmarks/bench_alerts.py [--burst 20000] [--devices 200] [--phase-s 90]
                                      [--loads 0.1,0.8] [--probe-every-s 1.0] [--inflight 1000]

1. capacity: `healthmon ingest` (intake + alert engine + notifier, as `serve` runs them
   minus the API) as its own process; a burst of fridge readings published as fast as
   the broker takes them, timed from the first publish to the last committed row
   (like bench_ingest's pipeline measurement);
2. latency: with the same service process, a paced background load of normal fridge
   readings from N devices at each fraction of that capacity, plus every
   `--probe-every-s` a probe device whose reading crosses a benchmark rule
   (`bench.probe_heat`: threshold above 10 °C, `for_s: 0`, scoped to the probe devices)
   followed `--clear-after-s` (10 s) later by a normal reading that resolves it. The rule is
   routed (group_wait_s 0) to a generic webhook channel pointing at an HTTP receiver in
   this process. The probe's device `ts` is its publish time (wall clock, same machine),
   so latency = arrival at the webhook - publish time; the alert's `detected_at` splits
   it into publish -> writer transaction and transaction -> webhook;
3. rule evaluation cost: the same burst again with HEALTHMON_EVALUATE_ALERTS=false and
   once more with it on (tables truncated before each), as wall time per reading and as
   the service process's CPU time per reading.

The default rule packs are loaded as `healthmon ingest` would seed them; the notifier
runs with the poll interval `serve` gives it (woken by NOTIFY; 5 s fallback scan).
Mosquitto of our own on a free port (deploy/mosquitto-bench.conf), a throwaway database
on the machine's PostgreSQL, the publisher in its own process. Results are printed and
appended to benchmarks/results/alerts.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import ADMIN, count_rows, start_broker  # noqa: E402

from alerts import parse_rule, seed_defaults  # noqa: E402
from alerts.notify import parse_config, save_config  # noqa: E402
from ingest import migrate  # noqa: E402

RULE_ID = "bench.probe_heat"
PROBE_HOT_C, PROBE_OK_C, PROBE_LIMIT_C = 12.0, 5.0, 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ webhook receiver


class Receiver:
    """A local HTTP endpoint standing in for the ops webhook; timestamps each arrival."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                t = time.time()
                with receiver._lock:
                    receiver.arrivals.append((t, self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> list[tuple[float, str, dict[str, Any]]]:
        with self._lock:
            out, self.arrivals = self.arrivals, []
        return out


# ------------------------------------------------------------------ publishers


def _client(port: int, name: str) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{secrets.token_hex(3)}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _reading(dev: str, ts: datetime, seq: int, temp_c: float, battery: bool) -> tuple[str, bytes]:
    values: dict[str, float] = {"temp_c": temp_c}
    if battery:
        values["battery_v"] = 3.6
    body = {"ts": ts.isoformat(), "seq": seq, "values": values}
    return f"hm/v1/coldchain/{dev}/telemetry", orjson.dumps(body)


def burst_publisher(port: int, n: int, devices: int, end: float) -> None:
    """Publish n QoS 1 readings as fast as the broker takes them; event times end at `end`."""
    c = _client(port, "bench-burst")
    t_end = datetime.fromtimestamp(end, UTC)
    rounds = n // devices
    infos = []
    for i in range(n):
        ts = t_end - timedelta(seconds=rounds - i // devices)
        infos.append(c.publish(*_reading(f"bench-{i % devices:05d}", ts, i, 4.0 + (i % 7) / 10,
                                         battery=True), qos=1))  # fmt: skip
    for info in infos:
        info.wait_for_publish(300)
    c.disconnect()
    c.loop_stop()


def paced_publisher(
    port: int, rate: float, seconds: float, devices: int, probes: int, probe_every_s: float,
    clear_after_s: float, seq0: int, out: Any,
) -> None:  # fmt: skip
    """Background readings at `rate` msg/s from `devices` fridges, ts = publish time; every
    `probe_every_s` a probe's hot reading, resolved by a normal one half a second later.
    Reports (background messages, probe messages) on `out`."""
    c = _client(port, "bench-paced")
    infos = []
    t0 = time.monotonic()
    sent = n_probe_msgs = 0
    next_probe, k = t0 + 0.5, 0
    clears: list[tuple[float, str]] = []
    while (now := time.monotonic()) < t0 + seconds:
        due = int((now - t0) * rate)
        while sent < due:
            dev = f"bench-{sent % devices:05d}"
            msg = _reading(dev, datetime.now(UTC), seq0 + sent, 4.0 + (sent % 7) / 10, True)
            infos.append(c.publish(*msg, qos=1))
            sent += 1
        if now >= next_probe:
            dev = f"probe-{k % probes:03d}"
            infos.append(c.publish(*_reading(dev, datetime.now(UTC), k, PROBE_HOT_C, False), qos=1))
            clears.append((now + clear_after_s, dev))
            n_probe_msgs += 1
            next_probe += probe_every_s
            k += 1
        while clears and clears[0][0] <= now:
            _, dev = clears.pop(0)
            infos.append(c.publish(*_reading(dev, datetime.now(UTC), k, PROBE_OK_C, False), qos=1))
            n_probe_msgs += 1
        time.sleep(0.002)
    for _, dev in clears:
        infos.append(c.publish(*_reading(dev, datetime.now(UTC), k, PROBE_OK_C, False), qos=1))
        n_probe_msgs += 1
    for info in infos:
        info.wait_for_publish(300)
    c.disconnect()
    c.loop_stop()
    out.put((sent, n_probe_msgs))


# ------------------------------------------------------------------ the service


class Service:
    """`healthmon ingest` (intake, alert engine, notifier) as a subprocess."""

    def __init__(self, dsn: str, port: int, tmp: Path, *, alerts: bool, tag: str) -> None:
        self.log = tmp / f"service-{tag}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
        env.update(
            HEALTHMON_DATABASE_URL=dsn,
            HEALTHMON_MQTT_URL=f"mqtt://127.0.0.1:{port}",
            HEALTHMON_MQTT_CLIENT_ID=f"bench-alerts-{tag}",
            HEALTHMON_DEVICE_RATE_LIMIT_PER_S="0",
            HEALTHMON_MQTT_RECEIVE_MAXIMUM="65535",
            HEALTHMON_EVALUATE_ALERTS=str(alerts).lower(),
            HEALTHMON_RUN_NOTIFIER="true",
        )
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Service:
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "ingest"],
            env=self._env,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )
        for _ in range(400):
            if b"connected to" in self.log.read_bytes():
                # the notifier opens before the TaskGroup starts; give its LISTEN a moment
                await asyncio.sleep(1.0)
                return self
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"service did not start:\n{self.log.read_text()[-2000:]}")

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)
        self._logf.close()

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def wait_rows(dsn: str, expected: int, limit_s: float) -> float:
    """Poll until `readings` holds `expected` rows; returns the monotonic time reached."""
    deadline = time.monotonic() + limit_s
    while True:
        got = await count_rows(dsn)
        if got >= expected:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"intake stalled at {got}/{expected} rows")
        await asyncio.sleep(0.05)


async def burst(dsn: str, svc: Service, port: int, n: int, devices: int) -> tuple[float, float]:
    """Returns (messages/s, service CPU µs per reading) for one burst of n messages."""
    base = await count_rows(dsn)
    cpu0 = svc.cpu_s()
    t_pub = time.monotonic()
    pub = mp.Process(target=burst_publisher, args=(port, n, devices, time.time() - 5))
    pub.start()
    t_done = await wait_rows(dsn, base + 2 * n, 600)
    cpu = svc.cpu_s() - cpu0
    await asyncio.to_thread(pub.join)
    return n / (t_done - t_pub), cpu / (2 * n) * 1e6


async def truncate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("TRUNCATE readings, latest_readings, rule_state, alerts CASCADE")
        await conn.commit()


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


async def phase(
    dsn: str, port: int, rx: Receiver, rate: float, args: argparse.Namespace, seq0: int
) -> dict[str, Any]:
    rx.take()
    base = await count_rows(dsn)
    q: mp.Queue[tuple[int, int]] = mp.Queue()
    pub = mp.Process(
        target=paced_publisher,
        args=(
            port,
            rate,
            args.phase_s,
            args.devices,
            args.probes,
            args.probe_every_s,
            args.clear_after_s,
            seq0,
            q,
        ),
    )
    t0 = time.monotonic()
    pub.start()
    sent, n_probe = await asyncio.to_thread(q.get, True, args.phase_s + 300)
    t_pub_end = time.monotonic()
    await asyncio.to_thread(pub.join)
    t_rows = await wait_rows(dsn, base + 2 * sent + n_probe, 300)
    expected_alerts = (n_probe + 1) // 2
    deadline = time.monotonic() + 40
    arrivals: list[tuple[float, str, dict[str, Any]]] = []
    while True:
        arrivals += rx.take()
        seen = {
            a["id"] for _, path, b in arrivals if path == "/probe"
            for a in b.get("alerts", [b]) if a.get("rule_id") == RULE_ID
        }  # fmt: skip
        if len(seen) >= expected_alerts or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    total_ms: dict[str, float] = {}
    detect_ms: dict[str, float] = {}
    for t, path, body in arrivals:
        if path != "/probe" or body.get("notification", {}).get("purpose") not in (None, "fired"):
            continue
        for a in body.get("alerts", [body]):
            if a.get("rule_id") != RULE_ID or a["id"] in total_ms:
                continue
            pub_t = datetime.fromisoformat(a["started_at"]).timestamp()
            total_ms[a["id"]] = (t - pub_t) * 1000
            detect_ms[a["id"]] = (
                datetime.fromisoformat(a["detected_at"]).timestamp() - pub_t
            ) * 1000
    lat = list(total_ms.values())
    det = list(detect_ms.values())
    return {
        "rate": rate,
        "achieved": sent / (t_pub_end - t0),
        "drain_s": t_rows - t_pub_end,
        "probes": expected_alerts,
        "notified": len(lat),
        "other": sum(1 for _, p, _ in arrivals if p != "/probe"),
        "p50": pct(lat, 50) if lat else float("nan"),
        "p99": pct(lat, 99) if lat else float("nan"),
        "max": max(lat) if lat else float("nan"),
        "det50": pct(det, 50) if det else float("nan"),
        "det99": pct(det, 99) if det else float("nan"),
        "sent": sent,
    }


# ------------------------------------------------------------------ setup


async def setup(dsn: str, args: argparse.Namespace, hook_port: int) -> None:
    await migrate(dsn, retention_days=30)
    probes = [f"probe-{k:03d}" for k in range(args.probes)]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO sites (site_id, region)"
            " VALUES ('bench', 'bench'), ('bench-probe', 'bench')"
        )
        # Fridge recorders reporting every 5 min: no offline alert fires within the run.
        await conn.execute(
            "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
            " SELECT 'bench-' || lpad(g::text, 5, '0'), 'coldchain', 'bench', 'fridge', 300"
            " FROM generate_series(0, %s - 1) g",
            (args.devices,),
        )
        await conn.execute(
            "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
            " SELECT unnest(%s::text[]), 'coldchain', 'bench-probe', 'fridge', 300",
            (probes,),
        )
        await seed_defaults(conn)  # what the engine seeds on an empty table
        rule = parse_rule({
            "kind": "threshold", "rule_id": RULE_ID, "metric": "temp_c", "op": "above",
            "high": PROBE_LIMIT_C, "for_s": 0, "severity": "warning",
            "scope": {"domain": "coldchain", "device_ids": probes},
            "name": "Benchmark probe above 10 °C", "standard": "benchmark (bench_alerts.py)",
        })  # fmt: skip
        await conn.execute(
            "INSERT INTO rules (rule_id, body, enabled, builtin) VALUES (%s, %s, true, false)",
            (RULE_ID, Jsonb(rule.model_dump(mode="json"))),
        )
        cfg = parse_config(
            {
                "channels": [
                    {"id": "probe-hook", "type": "webhook",
                     "url": f"http://127.0.0.1:{hook_port}/probe"},
                    {"id": "other-hook", "type": "webhook",
                     "url": f"http://127.0.0.1:{hook_port}/other"},
                ],
                "contact_groups": [
                    {"id": "bench-duty", "channels": ["probe-hook"]},
                    {"id": "ops", "channels": ["other-hook"]},
                ],
                "routes": [
                    {"id": "probe", "match": {"rule_id": RULE_ID},
                     "ladder": [{"groups": ["bench-duty"]}], "group_wait_s": 0},
                    {"id": "everything-else", "ladder": [{"groups": ["ops"]}]},
                ],
                "delivery": {"notify_resolved": False, "notify_acknowledged": False},
            },
            source="bench_alerts",
        )  # fmt: skip
        await save_config(conn, cfg, now=datetime.now(UTC))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=20000, help="messages per capacity burst")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--probes", type=int, default=20, help="probe devices, round robin")
    ap.add_argument("--phase-s", type=float, default=90.0)
    ap.add_argument("--loads", default="0.1,0.8", help="fractions of the measured capacity")
    ap.add_argument("--probe-every-s", type=float, default=1.0)
    ap.add_argument(
        "--clear-after-s",
        type=float,
        default=10.0,
        help="a probe's normal reading follows its hot one after this (the notifier skips an"
        " alert already resolved when it reads the fired event)",
    )
    ap.add_argument("--inflight", type=int, default=1000, help="broker in-flight window")
    args = ap.parse_args()
    started = time.monotonic()
    load_note = "load average {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    name = f"healthmon_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    phases: list[dict[str, Any]] = []
    try:
        with Receiver() as rx, tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            await setup(dsn, args, rx.port)
            broker, port = start_broker(args.inflight, tmp)
            try:
                async with Service(dsn, port, tmp, alerts=True, tag="on") as svc:
                    cap, cpu_on1 = await burst(dsn, svc, port, args.burst, args.devices)
                    print(f"capacity (alert rules on): {cap:,.0f} msg/s", flush=True)
                    for k, frac in enumerate(float(x) for x in args.loads.split(",")):
                        r = await phase(dsn, port, rx, frac * cap, args, 10_000_000 * (k + 1))
                        r["frac"] = frac
                        phases.append(r)
                        print(r, flush=True)
                await truncate(dsn)
                async with Service(dsn, port, tmp, alerts=False, tag="off") as svc:
                    rate_off, cpu_off = await burst(dsn, svc, port, args.burst, args.devices)
                await truncate(dsn)
                async with Service(dsn, port, tmp, alerts=True, tag="on2") as svc:
                    rate_on2, cpu_on2 = await burst(dsn, svc, port, args.burst, args.devices)
                print(f"burst: on {cap:,.0f}, off {rate_off:,.0f}, on {rate_on2:,.0f} msg/s")
            finally:
                broker.terminate()
                broker.wait()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    rate_on = statistics.mean([cap, rate_on2])
    cpu_on = statistics.mean([cpu_on1, cpu_on2])
    us_on, us_off = 1e6 / (2 * rate_on), 1e6 / (2 * rate_off)
    cost_wall = us_on - us_off
    cost_cpu = cpu_on - cpu_off
    lines = [
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: alerts; {os.cpu_count()} cores, shared "
        f"with other sessions' test runs ({load_note}); burst {args.burst} messages from "
        f"{args.devices} fridges (2 readings/message), broker in-flight {args.inflight}; "
        f"`healthmon ingest` (intake + engine with the default packs + notifier)\n",
        f"Intake capacity with alert rules on: **{cap:,.0f} msg/s** ({2 * cap:,.0f} "
        f"readings/s), first burst; repeated at the end: {rate_on2:,.0f} msg/s.\n",
        "### Publish-to-notification latency\n",
        f"Background: normal fridge readings at the rate below from {args.devices} devices, "
        f"ts = publish time; every {args.probe_every_s:g} s a probe reading above "
        f"`{RULE_ID}` (threshold, `for_s: 0`) from one of {args.probes} probe devices, "
        f"resolved {args.clear_after_s:g} s later. Route `group_wait_s: 0` to a generic "
        "webhook on a local HTTP "
        "receiver; notifier as `serve` builds it (NOTIFY-woken, 5 s fallback poll). "
        f"Latency = webhook arrival - the probe's publish time; {args.phase_s:g} s per load. "
        "\"to detection\" = the alert's `detected_at` (the writer's clock when it "
        "evaluated the batch) - publish time.\n",
        "| load | offered / achieved msg/s | probes / notified | p50 | p99 | max | "
        "to detection p50 / p99 | backlog drained after publishing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in phases:
        lines.append(
            f"| {r['frac']:.0%} of capacity | {r['rate']:,.0f} / {r['achieved']:,.0f} | "
            f"{r['probes']} / {r['notified']} | {r['p50']:.0f} ms | {r['p99']:.0f} ms | "
            f"{r['max']:.0f} ms | {r['det50']:.0f} / {r['det99']:.0f} ms | "
            f"{r['drain_s']:.1f} s |"
        )
    others = sum(r["other"] for r in phases)
    if others:
        lines.append(
            f"\n({others} notification(s) of other alerts arrived on the catch-all route.)"
        )
    lines += [
        "\n### Rule evaluation cost per reading\n",
        "Same burst, tables truncated before each, HEALTHMON_EVALUATE_ALERTS on / off "
        "(on = mean of the first and last burst). Wall = the pipeline's time per reading "
        "(first publish to last commit); CPU = the service process's user+system time per "
        "reading (PostgreSQL's own work for rule state is in the wall figure only).\n",
        "| | engine on | engine off | evaluation | share of the ingest path |",
        "|---|---|---|---|---|",
        f"| throughput | {rate_on:,.0f} msg/s | {rate_off:,.0f} msg/s | | |",
        f"| wall µs/reading | {us_on:.0f} | {us_off:.0f} | {cost_wall:.0f} µs | "
        f"{cost_wall / us_on:.0%} |",
        f"| service CPU µs/reading | {cpu_on:.0f} | {cpu_off:.0f} | {cost_cpu:.0f} µs | "
        f"{cost_cpu / cpu_on:.0%} |",
        f"\nRun time {time.monotonic() - started:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "alerts.md"
    if not out.exists():
        out.write_text("# Alerting benchmark (benchmarks/bench_alerts.py)\n")
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
