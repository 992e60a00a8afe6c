"""`healthmon rules ...`: load the default rule packs, list the rules in force."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import psycopg

from alerts import store
from alerts.packs import default_rules
from healthmon.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = subparsers.add_parser("rules", help="alert rules")
    sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    load = sub.add_parser(
        "load-defaults",
        help="upsert the default rule packs (rules someone edited are left alone)",
    )
    load.add_argument("--force", action="store_true", help="overwrite edited rules too")
    load.set_defaults(func=_load_defaults)
    show = sub.add_parser("list", help="list the enabled rules")
    show.set_defaults(func=_list)
    # The notifier's commands (`healthmon notify ...`) hang off this package's entry.
    from alerts.notify import cli as notify_cli

    notify_cli.register(subparsers)


def _dsn(settings: Settings) -> str | None:
    if settings.database_url is None:
        print("healthmon: HEALTHMON_DATABASE_URL is not set", file=sys.stderr)
        return None
    return settings.database_url.get_secret_value()


def _load_defaults(args: argparse.Namespace, settings: Settings) -> int:
    dsn = _dsn(settings)
    if dsn is None:
        return 2

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            return await store.upsert_rules(conn, default_rules(), builtin=not args.force)

    n = asyncio.run(run())
    print(f"{n} rule(s) written; running engines reload on NOTIFY healthmon_rules")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    dsn = _dsn(settings)
    if dsn is None:
        return 2

    async def run() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await store.load_rules(conn)

    for r in asyncio.run(run()):
        print(f"{r.rule_id:40} {r.kind:14} {r.severity:8} {r.standard}")
    return 0
