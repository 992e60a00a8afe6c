"""The app factory: one composition root for the HTTP API (pool, listener, routes, errors)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api import (
    routes_alerts,
    routes_ops,
    routes_readings,
    routes_registry,
    routes_rules,
    routes_session,
)
from api.problems import install_problem_handlers
from api.provisioning import DeviceProvisioner, NoopProvisioner
from healthmon.settings import Settings
from ingest import SchemaError, check_schema

logger = logging.getLogger(__name__)

MetricsSource = Callable[[], str]
ReadinessCheck = Callable[[], Awaitable[bool]]
STATIC_DIR = Path(__file__).resolve().parent / "static"


class Wakeup:
    """Wakes every waiter at once (one LISTEN connection fans out to all SSE clients)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


async def _listen_alert_events(
    dsn: str, wakeup: Wakeup, *, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0
) -> None:
    """LISTEN healthmon_alert_events on a dedicated connection; reconnect with capped
    exponential backoff and jitter. SSE clients also poll, so an outage only slows them."""
    attempt = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("LISTEN healthmon_alert_events")
                attempt = 0
                wakeup.fire()  # catch up on anything committed while we were away
                async for _ in conn.notifies():
                    wakeup.fire()
        except psycopg.OperationalError as exc:
            ceiling = min(backoff_cap_s, backoff_base_s * 2 ** min(attempt, 20))
            delay = random.uniform(ceiling / 2, ceiling)
            logger.warning(
                "alert-events listener lost its connection (%s); retry in %.1fs", exc, delay
            )
            attempt += 1
            await asyncio.sleep(delay)


async def _broker_reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def create_app(
    settings: Settings,
    *,
    metrics_sources: Sequence[MetricsSource] = (),
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
    provisioner: DeviceProvisioner | None = None,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    listen_notifications: bool = True,
    prepare_threshold: int | None = 5,
    sse_poll_s: float = 5.0,
    sse_heartbeat_s: float = 15.0,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: the one settings object; `dsn()` is required, `mqtt_url` optional.
        metrics_sources: callables returning Prometheus text lines (e.g. ingest's counters),
            appended to `/metrics`.
        readiness_checks: name -> async check for `/readyz`, in addition to the database.
            Default: a TCP connect to the broker of `settings.mqtt_target()` when set.
        provisioner: broker provisioning of device credentials (default: none).
        pool_max_size: 1 works (the TimescaleDB-in-WASM engine takes one connection).
        listen_notifications: wake the SSE stream by LISTEN on a dedicated connection;
            off for engines that allow a single connection (then it polls every
            `sse_poll_s`).
        prepare_threshold: psycopg's server-side prepare threshold; None for engines that
            keep prepared statements across connections (the PGlite test engine).
        clock: returns the current aware UTC time (tests pin it).
    """
    if readiness_checks is None:
        readiness_checks = {}
        if settings.mqtt_url is not None:
            target = settings.mqtt_target()
            readiness_checks = {"broker": lambda: _broker_reachable(target.host, target.port)}
    dsn = settings.dsn()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Fail fast (style 8): a bad DSN or an unmigrated database stops start-up. This
        # connection is closed before the pool opens (single-connection engines).
        try:
            async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn:
                app.state.backend = await check_schema(conn)
        except psycopg.OperationalError as exc:
            raise SchemaError(f"cannot connect to the database: {exc}") from exc
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=pool_min_size,
            max_size=pool_max_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": prepare_threshold,
            },
            open=False,
            name="api",
        )
        async with pool:
            app.state.pool = pool
            async with asyncio.TaskGroup() as tg:
                listener = None
                if listen_notifications:
                    listener = tg.create_task(
                        _listen_alert_events(dsn, app.state.wakeup),
                        name="api.alert_events_listener",
                    )
                try:
                    yield
                finally:
                    if listener is not None:
                        listener.cancel()

    app = FastAPI(
        title="healthmon API",
        version="1.0.0",
        description="Public-health IoT monitoring: registry, history, alerts, rules. "
        "Errors are RFC 9457 application/problem+json. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.provisioner = provisioner or NoopProvisioner()
    app.state.metrics_sources = tuple(metrics_sources)
    app.state.readiness_checks = dict(readiness_checks)
    app.state.wakeup = Wakeup()
    app.state.sse_poll_s = sse_poll_s
    app.state.sse_heartbeat_s = sse_heartbeat_s
    app.state.clock = clock or (lambda: datetime.now(UTC))

    install_problem_handlers(app)
    for module in (
        routes_ops,
        routes_session,
        routes_registry,
        routes_readings,
        routes_alerts,
        routes_rules,
    ):
        app.include_router(module.router)
    _include_console(app)
    return app


def _include_console(app: FastAPI) -> None:
    """The console's page routes (api/console.py, issue 6) and its static files at `/`."""
    try:
        console = import_module("api.console")
    except ModuleNotFoundError as exc:
        if exc.name != "api.console":
            raise
    else:
        router = getattr(console, "router", None)
        if router is not None:
            app.include_router(router)
    if STATIC_DIR.is_dir():
        # Mounted last: every API route above wins over a file of the same path.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="console")
