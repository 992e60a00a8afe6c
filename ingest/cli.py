"""`healthmon migrate | ingest | devices import | readings | rejected`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from healthmon.settings import Settings
from ingest.payloads import BadTimestamp, parse_ts
from ingest.queries import iter_readings, iter_rejected
from ingest.registry import DeviceImportError, import_devices, parse_device_csv
from ingest.schema import SchemaError, migrate


def _time(value: str) -> datetime:
    try:
        return parse_ts(int(value) if value.isdigit() else value)
    except BadTimestamp as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.add_argument("--backend", choices=["auto", "timescaledb", "postgres"], default="auto")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("ingest", help="run the MQTT intake until SIGTERM/SIGINT")
    p.set_defaults(func=cmd_ingest)

    dev = sub.add_parser("devices", help="the device registry")
    dsub = dev.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = dsub.add_parser("import", help="import devices from a CSV file (re-importing updates)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_devices_import)

    p = sub.add_parser("readings", help="print stored readings of a device")
    p.add_argument("--device", required=True)
    p.add_argument("--metric")
    p.add_argument("--start", type=_time, help="RFC 3339 or epoch ms")
    p.add_argument("--end", type=_time)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.set_defaults(func=cmd_readings)

    p = sub.add_parser("rejected", help="print rejected messages with their reasons")
    p.add_argument("--device")
    p.add_argument("--reason")
    p.add_argument("--since", type=_time)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.set_defaults(func=cmd_rejected)


def _fail(message: str) -> int:
    print(f"healthmon: {message}", file=sys.stderr)
    return 2


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        backend = asyncio.run(
            migrate(
                settings.dsn(),
                backend=args.backend,
                retention_days=settings.retention_days,
                compress_after_days=settings.compress_after_days,
            )
        )
    except (ValueError, SchemaError, psycopg.OperationalError) as exc:
        return _fail(str(exc))
    print(f"schema up to date (backend: {backend})")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from healthmon.app import run_service

    return run_service(settings, api=False, ingest=True)


def cmd_devices_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rows = parse_device_csv(args.file.read_text("utf-8"))
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc}")
    except DeviceImportError as exc:
        return _fail(f"{args.file}: {exc}")

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(settings.dsn()) as conn:
            n = await import_devices(conn, rows)
            await conn.execute("NOTIFY healthmon_devices")
            await conn.commit()
            return n

    try:
        n = asyncio.run(run())
    except (ValueError, psycopg.Error) as exc:
        return _fail(str(exc))
    print(f"imported {n} devices")
    return 0


Query = Callable[[psycopg.AsyncConnection[Any]], AsyncIterator[dict[str, Any]]]


def _print_rows(settings: Settings, query: Query, fmt: str, noun: str) -> int:
    """Stream the query's rows to stdout as CSV or JSON lines; the count to stderr."""

    async def run() -> int:
        count = 0
        writer: Any = None
        async with await psycopg.AsyncConnection.connect(settings.dsn()) as conn:
            async for row in query(conn):
                if fmt == "json":
                    line = orjson.dumps(row, option=orjson.OPT_NAIVE_UTC).decode()
                    sys.stdout.write(line + "\n")
                else:
                    if writer is None:
                        writer = csv.DictWriter(sys.stdout, fieldnames=list(row))
                        writer.writeheader()
                    writer.writerow(
                        {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
                    )
                count += 1
        return count

    try:
        n = asyncio.run(run())
    except (ValueError, psycopg.Error) as exc:
        return _fail(str(exc))
    print(f"{n} {noun}", file=sys.stderr)
    return 0


def cmd_readings(args: argparse.Namespace, settings: Settings) -> int:
    return _print_rows(
        settings,
        lambda conn: iter_readings(
            conn, device_id=args.device, metric=args.metric, start=args.start, end=args.end
        ),
        args.format,
        "readings",
    )


def cmd_rejected(args: argparse.Namespace, settings: Settings) -> int:
    return _print_rows(
        settings,
        lambda conn: iter_rejected(
            conn, device_id=args.device, reason=args.reason, since=args.since
        ),
        args.format,
        "rejected messages",
    )
