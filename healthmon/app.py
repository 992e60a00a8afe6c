"""The composition root: builds the intake, the alert engine, the notifier and the API
from one Settings object, runs them in one TaskGroup, and stops them on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import psycopg

from healthmon.metrics import counters_source
from healthmon.settings import Settings
from ingest import SchemaError, check_schema
from ingest.backoff import Backoff
from ingest.mqtt import BrokerError, MqttIntake
from ingest.partitions import ensure_partitions
from ingest.payloads import Limits
from ingest.pipeline import BatchPolicy, Ingest
from ingest.ratelimit import RateLimiter
from ingest.spool import Spool, SpoolError
from ingest.writer import AlertHook, Writer

logger = logging.getLogger(__name__)
PARTITION_CHECK_S = 3600.0


def build_ingest(settings: Settings, *, alert_hook: AlertHook | None = None) -> Ingest:
    """The intake pipeline, configured from the settings (not yet opened)."""
    target = settings.mqtt_target()
    intake = MqttIntake(
        host=target.host,
        port=target.port,
        client_id=settings.mqtt_client_id,
        username=target.username,
        password=target.password.get_secret_value() if target.password else None,
        tls=target.tls,
        ca_file=settings.broker_ca_file,
        share_group=settings.mqtt_share_group,
        queue_max=settings.queue_max_messages,
        keepalive_s=settings.mqtt_keepalive_s,
        receive_maximum=settings.mqtt_receive_maximum,
        session_expiry_s=settings.mqtt_session_expiry_s,
        protocol=settings.mqtt_protocol,
        reconnect_min_s=settings.mqtt_reconnect_min_s,
        reconnect_max_s=settings.mqtt_reconnect_max_s,
    )
    writer = Writer(
        dsn=settings.dsn(),
        method=settings.write_method,
        alert_hook=alert_hook,
        rejected_payload_max_bytes=settings.rejected_payload_max_bytes,
        connect_timeout_s=settings.db_connect_timeout_s,
    )
    limits = Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_batch_samples=settings.max_batch_samples,
        max_future_skew_s=settings.max_future_skew_s,
        retention_days=settings.retention_days,
        auto_register_domains=frozenset(settings.auto_register_domains),
    )
    return Ingest(
        intake=intake,
        writer=writer,
        dsn=settings.dsn(),
        limits=limits,
        policy=BatchPolicy(
            batch_max_rows=settings.batch_max_rows, flush_interval_s=settings.flush_interval_s
        ),
        rate_limiter=RateLimiter(
            rate_per_s=settings.device_rate_limit_per_s, burst=settings.device_rate_burst
        ),
        # --- reliability (issue 7): database retry backoff and the disk spool ---
        backoff=Backoff(base_s=settings.db_retry_base_s, cap_s=settings.db_retry_cap_s),
        spool=(
            Spool(
                settings.spool_dir,
                max_bytes=settings.spool_max_bytes,
                segment_max_bytes=settings.spool_segment_bytes,
            )
            if settings.spool_dir is not None
            else None
        ),
    )


async def _check_database(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn:
        return await check_schema(conn)


async def _partition_loop(settings: Settings) -> None:
    """Plain PostgreSQL only: keep partitions ahead of time and drop expired ones."""
    backoff, attempt = Backoff(base_s=5, cap_s=300), 0
    while True:
        try:
            await ensure_partitions(
                settings.dsn(),
                retention_days=settings.retention_days,
                width_days=settings.partition_days,
                ahead=settings.partitions_ahead,
            )
            attempt = 0
            await asyncio.sleep(PARTITION_CHECK_S)
        except psycopg.OperationalError as exc:
            logger.warning("partition upkeep failed: %s", exc)
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1


async def serve(
    settings: Settings,
    *,
    api: bool = True,
    ingest: bool = True,
    notifier: bool | None = None,
    extra: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> None:
    """Run the chosen components until cancelled. Fails fast on misconfiguration.

    The intake carries the alert engine (rules are evaluated in the writer's
    transaction); the notifier delivers from the alert outbox. With several ingest
    workers, run the notifier on one of them (HEALTHMON_RUN_NOTIFIER=false elsewhere).
    """
    from alerts import AlertEngine, Notifier

    backend = await _check_database(settings.dsn())
    logger.info("database ok (backend: %s)", backend)
    run_notifier = settings.run_notifier if notifier is None else notifier
    async with contextlib.AsyncExitStack() as stack:
        # Everything is opened before any task starts: a start-up failure is reported
        # as itself, not as an exception group.
        metrics_sources: list[Callable[[], str]] = []
        jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        if ingest:
            engine: AlertEngine | None = None
            if settings.evaluate_alerts:
                engine = await stack.enter_async_context(AlertEngine(settings.dsn()))
                counters = engine.counters
                metrics_sources.append(counters_source("healthmon_alerts_engine", lambda: counters))
            pipeline = await stack.enter_async_context(build_ingest(settings, alert_hook=engine))
            metrics_sources.append(pipeline.metrics)
            jobs.append(("ingest.pipeline", pipeline.run))
            if backend == "postgres":
                jobs.append(("ingest.partitions", lambda: _partition_loop(settings)))
        if run_notifier:
            notify = await stack.enter_async_context(Notifier(dsn=settings.dsn()))
            metrics_sources.append(counters_source("healthmon_notify", lambda: notify.stats))
            jobs.append(("alerts.notify", notify.run))
        if api:
            import uvicorn

            from api import create_app

            app = create_app(
                settings, metrics_sources=metrics_sources, provisioner=_provisioner(settings)
            )
            config = uvicorn.Config(
                app, host=settings.api_host, port=settings.api_port, log_level="info", lifespan="on"
            )
            server = uvicorn.Server(config)
            # uvicorn captures SIGINT/SIGTERM while it serves, shuts down gracefully, then
            # re-raises the signal, which reaches run_service's handler: everything drains.
            jobs.append(("api.server", lambda: _serve_gracefully(server)))
        for job in extra:
            jobs.append((getattr(job, "__name__", "extra"), job))
        async with asyncio.TaskGroup() as tg:
            for name, job in jobs:
                tg.create_task(job(), name=name)


async def _serve_gracefully(server: Any) -> None:
    """Run uvicorn; on cancellation ask it to stop and wait, so its lifespan (the API's
    connection pool) closes cleanly instead of being torn down mid-await."""
    task = asyncio.create_task(server.serve(), name="api.uvicorn")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise


def _provisioner(settings: Settings) -> Any:
    """The broker provisioner (Mosquitto dynamic security) when configured, else None."""
    try:
        from api.broker_provisioning import provisioner_from_settings
    except ImportError:
        return None
    return provisioner_from_settings(settings)


def tune_gc() -> None:
    """For a long-running service: what was loaded at start (the web framework, models,
    rules) is moved out of the collector's sight, and young collections run less often.
    The intake allocates a few short-lived objects per message; with the defaults the
    collector ran every 700 of them and its full passes walked every object imported at
    start, which profiling showed as a tenth of the intake's CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_service(
    settings: Settings, *, api: bool, ingest: bool, notifier: bool | None = None
) -> int:
    """Entry point for `healthmon serve | ingest | api`: runs until SIGTERM/SIGINT."""
    return run_until_signalled(
        lambda: serve(settings, api=api, ingest=ingest, notifier=notifier), name="healthmon"
    )


def run_until_signalled(work: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> int:
    """Run a long-lived service coroutine until SIGTERM/SIGINT cancel it (it drains on
    the way out), with the collector tuned for a service. A configuration or connection
    problem is one line on stderr and exit code 2."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await work()
        logger.info("stopped cleanly")

    tune_gc()
    try:
        asyncio.run(main())
    except (ValueError, SchemaError, BrokerError, SpoolError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"{name}: cannot reach the database: {exc}", file=sys.stderr)
        return 2
    return 0
