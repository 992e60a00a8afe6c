"""`healthmon notify ...`: load and show the notification configuration, run the notifier.

`alerts/cli.py` calls `register(subparsers)` from its own `register`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import yaml

from alerts.notify.config import parse_config_file
from alerts.notify.config_store import load_config, save_config
from alerts.notify.errors import ConfigError
from alerts.notify.service import Notifier
from healthmon.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `notify load FILE`, `notify show` and `notify run`."""
    p = subparsers.add_parser("notify", help="notification channels, routing and delivery")
    sub = p.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    load = sub.add_parser("load", help="replace the stored configuration with a YAML/JSON file")
    load.add_argument("file", type=Path)
    load.add_argument("--check", action="store_true", help="validate only, store nothing")
    load.set_defaults(func=_cmd_load)
    show = sub.add_parser("show", help="print the stored configuration")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_cmd_show)
    run = sub.add_parser("run", help="run the notifier (headless worker)")
    run.add_argument("--name", default="default", help="cursor name (default: default)")
    run.set_defaults(func=_cmd_run)


def _cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    try:
        cfg = parse_config_file(args.file)
    except ConfigError as exc:
        print(f"healthmon notify load: {exc}", file=sys.stderr)
        return 2
    summary = (
        f"{len(cfg.channels)} channels, {len(cfg.contact_groups)} contact groups, "
        f"{len(cfg.routes)} routes"
    )
    if args.check:
        print(f"{args.file}: valid ({summary})")
        return 0

    async def store() -> str:
        async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as conn:
            return await save_config(conn, cfg, now=datetime.now(UTC))

    try:
        version = asyncio.run(store())
    except (psycopg.Error, ValueError) as exc:
        print(f"healthmon notify load: {exc}", file=sys.stderr)
        return 1
    print(f"loaded {summary} (version {version})")
    return 0


def _cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async def fetch() -> dict[str, object]:
        async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as conn:
            _, cfg = await load_config(conn)
        return cfg.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    try:
        data = asyncio.run(fetch())
    except (psycopg.Error, ValueError) as exc:
        print(f"healthmon notify show: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), end="")
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    async def main() -> None:
        async with Notifier(dsn=settings.dsn(), name=args.name) as notifier:
            await notifier.run()

    try:
        asyncio.run(main())
    except (psycopg.OperationalError, ValueError) as exc:
        print(f"healthmon notify run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
