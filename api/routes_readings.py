"""`GET /api/v1/readings`: raw history with keyset pages, downsampled series, CSV export."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api import history, store
from api.auth import Viewer
from api.models import LimitsOut, ReadingPoint, ReadingsPage
from api.pagination import decode_cursor, encode_cursor
from api.problems import PROBLEM_RESPONSES, invalid, not_found
from ingest import CATALOGUE

router = APIRouter(prefix="/api/v1", tags=["readings"], responses=PROBLEM_RESPONSES)

MAX_LIMIT = 10_000
DEFAULT_SPAN = timedelta(hours=24)
# Enough for ten years of hourly buckets; a wider raw range is simply paged.
MAX_SPAN = timedelta(days=3660)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise invalid(f"query.{name}", "must be RFC 3339 with an offset (e.g. +08:00 or Z)")
    return value


@router.get(
    "/readings",
    response_model=ReadingsPage,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def readings(
    request: Request,
    principal: Viewer,
    device_id: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
    metric: Annotated[
        str | None,
        Query(pattern=r"^[a-z0-9_]{1,64}$", description="required with `bucket`"),
    ] = None,
    start: Annotated[datetime | None, Query(description="RFC 3339; default end - 24 h")] = None,
    end: Annotated[datetime | None, Query(description="RFC 3339, exclusive; default now")] = None,
    bucket: history.Bucket | None = None,
    agg: Annotated[history.Agg | None, Query(description="default avg")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows or buckets")] = 1000,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Raw readings in [start, end) ordered by time, or a downsampled series (`bucket` +
    `agg`) with per-bucket sample counts and time within the device's rule limits.
    `format=csv` streams the whole range (from `cursor`, if given), ignoring `limit`."""
    state = request.app.state
    start, end = _aware("start", start), _aware("end", end)
    end = end or state.clock()
    start = start or end - DEFAULT_SPAN
    if start >= end:
        raise invalid("query.start", "must be before end")
    if end - start > MAX_SPAN:
        raise invalid("query.end", f"the range may span at most {MAX_SPAN.days} days")
    if agg is not None and bucket is None:
        raise invalid("query.agg", "needs a bucket")
    if bucket is not None and metric is None:
        raise invalid("query.metric", "is required with bucket")

    async with state.pool.connection() as conn:
        device = await store.get_device(conn, device_id, principal.region_filter())
        if device is None:
            raise not_found("device", device_id)
        catalogue = CATALOGUE.get(device["domain"], {})
        if metric is not None and metric not in catalogue:
            raise invalid("query.metric", f"not a metric of the {device['domain']} domain")
        limits = None
        if bucket is not None:
            assert metric is not None
            limits = await history.device_limits(conn, device=device, metric=metric)
    unit = catalogue[metric].unit if metric is not None else None
    if bucket is None:
        return await _raw(state, device_id, metric, start, end, limit, cursor, format, unit)
    assert metric is not None  # checked above: bucket needs a metric
    return await _bucketed(
        state,
        device,
        metric,
        start,
        end,
        bucket,
        agg or "avg",
        limit,
        cursor,
        format,
        limits,
        unit,
    )


async def _raw(
    state: Any,
    device_id: str,
    metric: str | None,
    start: datetime,
    end: datetime,
    limit: int,
    cursor: str | None,
    fmt: str,
    unit: str | None,
) -> Any:
    after: tuple[datetime, str] | None = None
    if cursor is not None:
        ts, last_metric = decode_cursor(cursor, (datetime, str)) or (None, None)
        after = (ts, last_metric)
    if fmt == "csv":
        return StreamingResponse(
            history.stream_raw_csv(
                state.pool,
                device_id=device_id,
                metric=metric,
                start=start,
                end=end,
                after=after,
            ),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{device_id}.csv"'},
        )
    async with state.pool.connection() as conn:
        rows = await history.raw_page(
            conn,
            device_id=device_id,
            metric=metric,
            start=start,
            end=end,
            after=after,
            limit=limit,
        )
    nxt = encode_cursor(rows[-1]["ts"], rows[-1]["metric"]) if len(rows) == limit else None
    return ReadingsPage(
        device_id=device_id,
        metric=metric,
        start=start,
        end=end,
        unit=unit,
        items=[ReadingPoint(**r) for r in rows],
        next_cursor=nxt,
    )


async def _bucketed(
    state: Any,
    device: dict[str, Any],
    metric: str,
    start: datetime,
    end: datetime,
    bucket: str,
    agg: str,
    limit: int,
    cursor: str | None,
    fmt: str,
    limits: history.Limits | None,
    unit: str | None,
) -> Any:
    width = timedelta(seconds=history.BUCKET_SECONDS[bucket])
    a, b = history.bucket_window(start, end, history.BUCKET_SECONDS[bucket])
    if cursor is not None:
        (after,) = decode_cursor(cursor, (datetime,)) or (a,)
        a = max(a, history.bucket_floor(after, history.BUCKET_SECONDS[bucket]) + width)
    common = {
        "backend": state.backend,
        "device_id": device["device_id"],
        "metric": metric,
        "bucket": bucket,
        "agg": agg,
        "limits": limits,
        "interval_s": device["expected_interval_s"],
    }
    if fmt == "csv":
        return StreamingResponse(
            history.stream_bucket_csv(state.pool, a=a, b=b, **common),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{device["device_id"]}.csv"'},
        )
    page_end = min(b, a + width * limit)
    points: list[dict[str, Any]] = []
    if a < page_end:
        async with state.pool.connection() as conn:
            points = await history.bucket_page(conn, a=a, b=page_end, **common)
    nxt = encode_cursor(points[-1]["ts"]) if points and page_end < b else None
    return ReadingsPage(
        device_id=device["device_id"],
        metric=metric,
        start=start,
        end=end,
        bucket=bucket,
        agg=agg,
        unit=unit,
        limits=LimitsOut.of(limits),
        items=[ReadingPoint(metric=metric, **p) for p in points],
        next_cursor=nxt,
    )
