"""Liveness, readiness and Prometheus metrics (unauthenticated, for probes and scrapers)."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg_pool import PoolTimeout

from api import store
from api.models import Health

logger = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

_CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "a dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers and every configured check (the broker) passes."""
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            async with state.pool.connection(timeout=_CHECK_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        checks["database"] = "ok"
    except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    for name, check in state.readiness_checks.items():
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_S):
                ok = await check()
        except (OSError, TimeoutError):
            ok = False
        checks[name] = "ok" if ok else "unavailable"
    healthy = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format: the ingest process's counters (intake rate, rejected by
    reason, write latency, queue depth) plus alerts by state and notification failures."""
    state = request.app.state
    lines: list[str] = []
    for source in state.metrics_sources:
        try:
            text = source()
        except Exception:  # one broken source must not hide the others (logged)
            logger.exception("metrics source %r failed", source)
            continue
        lines.append(text.rstrip("\n"))
    try:
        async with state.pool.connection(timeout=_CHECK_TIMEOUT_S) as conn:
            alerts = await store.alert_counts(conn)
            failures = await store.notification_failures(conn)
        lines.append("# HELP healthmon_alerts Alerts by state and severity.")
        lines.append("# TYPE healthmon_alerts gauge")
        for r in alerts:
            lines.append(
                f'healthmon_alerts{{state="{_label(r["state"])}",'
                f'severity="{_label(r["severity"])}"}} {r["n"]}'
            )
        lines.append(
            "# HELP healthmon_notification_attempts_failed_total Failed delivery attempts."
        )
        lines.append("# TYPE healthmon_notification_attempts_failed_total counter")
        for r in failures:
            channel = _label(r["channel"])
            lines.append(
                f'healthmon_notification_attempts_failed_total{{channel="{channel}"}} '
                f"{r['attempts']}"
            )
        lines.append(
            "# HELP healthmon_notifications_failed_total Notifications that finally failed."
        )
        lines.append("# TYPE healthmon_notifications_failed_total counter")
        for r in failures:
            channel = _label(r["channel"])
            lines.append(
                f'healthmon_notifications_failed_total{{channel="{channel}"}} {r["failed"]}'
            )
        up = 1
    except (psycopg.Error, PoolTimeout) as exc:
        logger.warning("metrics: database unavailable: %s", exc)
        up = 0
    lines.append("# HELP healthmon_api_database_up Whether the API reached the database.")
    lines.append("# TYPE healthmon_api_database_up gauge")
    lines.append(f"healthmon_api_database_up {up}")
    return PlainTextResponse(
        "\n".join(line for line in lines if line) + "\n",
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
