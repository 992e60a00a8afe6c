"""`healthmon keys ...`, `healthmon users create`, `healthmon api`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api import auth, store
from healthmon.settings import Settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys`, `users` and `api` to the `healthmon` command."""
    keys = subparsers.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--role", required=True, choices=auth.ROLES)
    create.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="R",
        help="limit the key to this region (repeatable; default: all)",
    )
    create.add_argument("--name", default="", help="what the key is for")
    create.set_defaults(func=_keys_create)
    lst = keys_sub.add_parser("list", help="list keys (never their secrets)")
    lst.set_defaults(func=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)

    users = subparsers.add_parser("users", help="console users")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ucreate = users_sub.add_parser("create", help="create or reset a user (password prompted)")
    ucreate.add_argument("username")
    ucreate.add_argument("--role", required=True, choices=auth.ROLES)
    ucreate.add_argument("--region", action="append", default=[], metavar="R")
    ucreate.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    ucreate.set_defaults(func=_users_create)

    api = subparsers.add_parser("api", help="run only the HTTP API (uvicorn)")
    api.add_argument("--host", default=None, help="default: HEALTHMON_API_HOST")
    api.add_argument("--port", type=int, default=None, help="default: HEALTHMON_API_PORT")
    api.set_defaults(func=_run_api)


async def _with_conn(settings: Settings, action: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(
        settings.dsn(), autocommit=True, row_factory=dict_row
    ) as conn:
        return await action(conn)


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    key_id, key, key_hash = auth.new_api_key()

    async def action(conn: store.Conn) -> None:
        await store.insert_api_key(conn, key_id, key_hash, args.role, args.region, args.name)

    asyncio.run(_with_conn(settings, action))
    print(key)
    scope = ", ".join(args.region) if args.region else "all regions"
    print(
        f"key {key_id}: role {args.role}, {scope}. Store it now: it is not shown again.",
        file=sys.stderr,
    )
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(_with_conn(settings, store.list_api_keys))
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        regions = ",".join(r["regions"]) or "*"
        print(f"{r['key_id']}\t{r['role']}\t{regions}\t{state}\t{r['name']}")
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def action(conn: store.Conn) -> bool:
        return await store.revoke_api_key(conn, args.key_id)

    if not asyncio.run(_with_conn(settings, action)):
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    return 0


def _users_create(args: argparse.Namespace, settings: Settings) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    if len(password) < 8:
        print("a password needs at least 8 characters", file=sys.stderr)
        return 1
    password_hash = auth.hash_password(password)

    async def action(conn: store.Conn) -> None:
        await store.upsert_user(conn, args.username, password_hash, args.role, args.region)

    try:
        asyncio.run(_with_conn(settings, action))
    except psycopg.errors.CheckViolation:
        print(f"invalid user name {args.username!r}", file=sys.stderr)
        return 1
    print(f"user {args.username}: role {args.role}", file=sys.stderr)
    return 0


def _run_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app

    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_config=None,  # logging is configured by the entry point
        proxy_headers=True,
    )
    return 0
