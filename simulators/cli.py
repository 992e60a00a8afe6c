"""`healthmon simulate`: run a simulated fleet against the broker.

    healthmon simulate --domain coldchain --devices 200 --interval 60s --speed 60 \\
        --faults excursion=0.01,offline=0.002 --seed 7 --register --truth truth.jsonl \\
        --duration 1d
    healthmon simulate --domain air --devices 5000 --load 2000 --duration 10m
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
from contextlib import ExitStack
from datetime import UTC, datetime

from healthmon.settings import Settings
from ingest import DOMAINS
from simulators.faults import FaultSpecError, parse_faults
from simulators.fleet import build_fleet
from simulators.registry import register_fleet
from simulators.runner import publish_sync
from simulators.transport import MqttTransport, TransportError
from simulators.truth import TruthWriter

logger = logging.getLogger(__name__)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """`"90s"`, `"5m"`, `"2h"`, `"1d"`, `"0.5"` (seconds) -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 60s, 5m, 2h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _speed(text: str) -> float | None:
    if text in ("max", "inf"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad speed {text!r}: a number or 'max'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be positive")
    return value


def _faults(text: str) -> dict[str, float]:
    try:
        return parse_faults(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad start {text!r}: RFC 3339 with offset") from None
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError("start needs a UTC offset")
    return dt


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run simulated devices against the broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--domain", default="coldchain", choices=[*DOMAINS, "all"])
    p.add_argument("--devices", type=int, default=10, help="number of devices (default 10)")
    p.add_argument("--profile", help="one profile for every device (default: a realistic mix)")
    p.add_argument(
        "--interval", type=parse_duration, help="reporting interval (default: per profile)"
    )
    p.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help="simulated seconds per wall second; 1 is real time, 'max' as fast as possible",
    )
    p.add_argument(
        "--duration", type=parse_duration, help="simulated time to run (default: for ever)"
    )
    p.add_argument(
        "--start",
        type=_start,
        help="simulated start (default: now in real time; now minus --duration when accelerated, "
        "so no timestamp is in the future)",
    )
    p.add_argument(
        "--faults", type=_faults, default={}, help="KIND=RATE per device-hour, comma-separated"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="sim", help="device and site id prefix (default sim)")
    p.add_argument("--no-natural", action="store_true", help="no natural coverage gaps")
    p.add_argument("--register", action="store_true", help="upsert sites and devices first")
    p.add_argument("--truth", help="append the ground-truth log (JSON lines) to this file")
    p.add_argument(
        "--load",
        type=float,
        metavar="RATE",
        help="load mode: a fixed total rate in messages/s, real-time timestamps",
    )
    p.add_argument("--connections", type=int, default=2, help="shared MQTT connections")
    p.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="QoS of telemetry and events (status is always 1); 0 for raw load tests",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.devices < 1:
        print("healthmon simulate: --devices must be >= 1", file=sys.stderr)
        return 2
    interval_s: float | None = args.interval
    speed: float | None = args.speed
    rate: float | None = args.load
    if rate is not None:
        if rate <= 0:
            print("healthmon simulate: --load must be positive", file=sys.stderr)
            return 2
        # Each device reports once per `devices / rate` seconds: together, `rate` per second.
        interval_s = args.devices / rate
        speed = None
    now = datetime.now(UTC)  # the entry point owns the wall clock
    start: datetime
    if args.start is not None:
        start = args.start
    elif rate is not None or speed == 1.0:
        start = now
    elif args.duration is None:
        print("healthmon simulate: an accelerated run needs --duration or --start", file=sys.stderr)
        return 2
    else:
        start = datetime.fromtimestamp(now.timestamp() - args.duration, UTC)
    end = None if args.duration is None else start.timestamp() + args.duration
    try:
        fleet = build_fleet(
            args.domain,
            args.devices,
            args.seed,
            args.faults,
            prefix=args.prefix,
            profile=args.profile,
            natural=not args.no_natural,
            interval_s=interval_s,
        )
        target = settings.mqtt_target()
    except ValueError as exc:
        print(f"healthmon simulate: {exc}", file=sys.stderr)
        return 2
    if args.register:
        try:
            n = register_fleet(settings.dsn(), fleet)
        except ValueError as exc:
            print(f"healthmon simulate: {exc}", file=sys.stderr)
            return 2
        logger.info("registered %d devices on %d sites", n, len(fleet.sites))
    transport = MqttTransport(
        target.host,
        target.port,
        username=target.username,
        password=target.password.get_secret_value() if target.password else None,
        tls=target.tls,
        connections=args.connections,
        client_id_prefix=f"healthmon-sim-{args.prefix}",
        telemetry_qos=args.qos,
    )
    stop = threading.Event()
    with ExitStack() as stack:
        try:
            stack.enter_context(transport)
        except TransportError as exc:
            print(f"healthmon simulate: {exc}", file=sys.stderr)
            return 1
        writer = stack.enter_context(TruthWriter(args.truth)) if args.truth else None
        logger.info(
            "simulating %d %s devices from %s (%s)",
            len(fleet),
            args.domain,
            start.isoformat(),
            f"load {rate}/s" if rate else ("max speed" if speed is None else f"speed {speed}"),
        )
        try:
            stats = publish_sync(
                fleet.run(start, end),
                transport,
                speed=speed,
                rate=rate,
                sim_start=start.timestamp(),
                truth=writer,
                stop=stop,
            )
        except KeyboardInterrupt:
            stop.set()
            raise
    logger.info(
        "sent %d messages in %.1f s (%.0f/s), %d truth records",
        stats.messages,
        stats.elapsed_s,
        stats.rate_per_s,
        stats.truth_records,
    )
    return 0
