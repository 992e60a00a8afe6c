"""Alerts: list with filters, one alert with its timeline, acknowledge, and the SSE stream."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row, tuple_row

import alerts
from api import store
from api.auth import Operator, Principal, Viewer
from api.models import (
    AckRequest,
    Alert,
    AlertDetail,
    AlertEvent,
    AlertState,
    Domain,
    Page,
    Severity,
)
from api.pagination import decode_cursor, encode_cursor
from api.problems import PROBLEM_RESPONSES, ApiError, invalid, not_found

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=PROBLEM_RESPONSES)

AlertIdPath = Annotated[
    str,
    Path(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
]
_SSE_BATCH = 500
_CONTRACT_FIELDS = tuple(Alert.model_fields)


def alert_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's alert object (plus the engine's extra fields) from an `alerts` row."""
    return alerts.alert_to_contract_dict(row)


@contextlib.asynccontextmanager
async def _tuple_rows(conn: Any) -> AsyncIterator[Any]:
    """The alert engine's functions read rows as tuples; our pool hands out dict rows."""
    conn.row_factory = tuple_row
    try:
        yield conn
    finally:
        conn.row_factory = dict_row


@router.get("/alerts", response_model=Page[Alert])
async def list_alerts(
    request: Request,
    principal: Viewer,
    state: Annotated[list[AlertState] | None, Query(description="repeatable")] = None,
    severity: Annotated[list[Severity] | None, Query(description="repeatable")] = None,
    domain: Domain | None = None,
    device_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
    site_id: Annotated[str | None, Query(max_length=64)] = None,
    region: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[
        datetime | None, Query(description="started or changed at or after (RFC 3339)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[Alert]:
    """Newest first."""
    if since is not None and since.tzinfo is None:
        raise invalid("query.since", "must be RFC 3339 with an offset")
    after = decode_cursor(cursor, (datetime, str))
    async with request.app.state.pool.connection() as conn:
        rows = await store.list_alerts(
            conn,
            regions=principal.region_filter(),
            filters={
                "state": state,
                "severity": severity,
                "domain": domain,
                "device_id": device_id,
                "site_id": site_id,
                "region": region,
                "since": since,
            },
            after=(after[0], after[1]) if after else None,
            limit=limit,
        )
    nxt = encode_cursor(rows[-1]["started_at"], str(rows[-1]["id"])) if len(rows) == limit else None
    return Page[Alert](items=[Alert(**alert_dict(r)) for r in rows], next_cursor=nxt)


@router.get("/alerts/stream", responses={200: {"content": {"text/event-stream": {}}}})
async def alert_stream(
    request: Request,
    principal: Viewer,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=20, pattern=r"^[0-9]*$")
    ] = None,
    after_id: Annotated[
        int | None, Query(ge=0, description="like Last-Event-ID, for clients that cannot set it")
    ] = None,
    max_events: Annotated[
        int | None, Query(ge=1, le=10000, description="close after this many (finite mode)")
    ] = None,
) -> StreamingResponse:
    """`text/event-stream` of alert state changes (fired, acknowledged, resolved, ...).

    Each event has `id` = the `alert_events` id, `event: alert`, and the alert object
    with `event_kind`, `event_at`, `event_actor` as data. Reconnecting with
    `Last-Event-ID` resumes after that event; without it the stream starts at now.
    """
    state = request.app.state
    start_id: int | None = None
    if last_event_id:
        start_id = int(last_event_id)
    elif after_id is not None:
        start_id = after_id
    if start_id is None:
        async with state.pool.connection() as conn:
            start_id = await store.last_alert_event_id(conn)
    return StreamingResponse(
        _events(request, principal, start_id, max_events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, principal: Principal, last_id: int, max_events: int | None
) -> AsyncIterator[str]:
    state = request.app.state
    sent = 0
    yield f"retry: 3000\n: resuming after {last_id}\n\n"
    clock = state.clock
    last_beat = clock()
    while True:
        async with state.pool.connection() as conn:
            rows = await store.alert_events_after(
                conn, last_id, principal.region_filter(), _SSE_BATCH
            )
        for row in rows:
            data = alert_dict(row)
            data.update(
                event_kind=row["event_kind"],
                event_at=row["event_at"],
                event_actor=row["event_actor"],
            )
            last_id = row["event_id"]
            yield f"id: {last_id}\nevent: alert\ndata: {json.dumps(data, default=_json)}\n\n"
            sent += 1
            if max_events is not None and sent >= max_events:
                return
        if len(rows) == _SSE_BATCH:
            continue
        if await request.is_disconnected():
            return
        now = clock()
        if (now - last_beat).total_seconds() >= state.sse_heartbeat_s:
            yield ": keep-alive\n\n"  # proxies close idle connections
            last_beat = now
        # Woken by NOTIFY healthmon_alert_events; the timeout is the fallback poll.
        await state.wakeup.wait(min(state.sse_poll_s, state.sse_heartbeat_s))


def _json(v: object) -> str:
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


@router.get("/alerts/{alert_id}", response_model=AlertDetail)
async def get_alert(alert_id: AlertIdPath, request: Request, principal: Viewer) -> AlertDetail:
    """One alert with its timeline (every state change and notification step)."""
    async with request.app.state.pool.connection() as conn:
        row = await store.get_alert(conn, alert_id, principal.region_filter())
        if row is None:
            raise not_found("alert", alert_id)
        events = await store.alert_timeline(conn, alert_id)
    return AlertDetail(**alert_dict(row), timeline=[AlertEvent(**e) for e in events])


@router.post("/alerts/{alert_id}/ack", response_model=AlertDetail)
async def acknowledge(
    alert_id: AlertIdPath, body: AckRequest, request: Request, principal: Operator
) -> AlertDetail:
    """Acknowledge a firing alert with a note (operator or admin). 409 unless firing."""
    state = request.app.state
    now = state.clock()
    regions = principal.region_filter()
    async with state.pool.connection() as conn:
        async with conn.transaction():
            row = await store.get_alert(conn, alert_id, regions)
            if row is None:
                raise not_found("alert", alert_id)
            if row["state"] != "firing":
                raise ApiError(409, f"the alert is {row['state']}, not firing", kind="conflict")
            async with _tuple_rows(conn):
                ok = await alerts.acknowledge(conn, row["id"], principal.name, body.note, now)
            if ok is False:
                raise ApiError(409, "the alert changed state meanwhile", kind="conflict")
        row = await store.get_alert(conn, alert_id, regions)
        events = await store.alert_timeline(conn, alert_id)
    assert row is not None
    return AlertDetail(**alert_dict(row), timeline=[AlertEvent(**e) for e in events])


@router.post("/alerts/{alert_id}/resolve", response_model=AlertDetail)
async def resolve(
    alert_id: AlertIdPath, body: AckRequest, request: Request, principal: Operator
) -> AlertDetail:
    """Resolve an open alert by hand, with a note, where its rule allows it
    (`manual_resolve`, e.g. medical-waste weight mismatches). An extension: docs/api.md."""
    state = request.app.state
    now = state.clock()
    regions = principal.region_filter()
    async with state.pool.connection() as conn:
        async with conn.transaction():
            row = await store.get_alert(conn, alert_id, regions)
            if row is None:
                raise not_found("alert", alert_id)
            try:
                async with _tuple_rows(conn):
                    ok = await alerts.resolve_manually(
                        conn, row["id"], principal.name, body.note, now
                    )
            except alerts.ManualResolveNotAllowed as exc:
                raise ApiError(
                    409, "this alert's rule does not allow resolving by hand", kind="conflict"
                ) from exc
            if ok is False:
                raise ApiError(409, "the alert is already resolved", kind="conflict")
        row = await store.get_alert(conn, alert_id, regions)
        events = await store.alert_timeline(conn, alert_id)
    assert row is not None
    return AlertDetail(**alert_dict(row), timeline=[AlertEvent(**e) for e in events])
