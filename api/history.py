"""Readings history: raw pages, downsampled series, and the device's limits. All its SQL.

Downsampled series use whole buckets aligned to 2000-01-01 00:00 UTC: a bucket is in the
answer when it overlaps [start, end), and is computed over the whole bucket, so a page
of buckets is the same whichever way it is computed. On TimescaleDB, 1h and 1d come from
the real-time continuous aggregates `readings_1h` / `readings_1d`, other widths from raw
rows with `time_bucket`; on plain PostgreSQL every width is computed from raw rows with
`date_bin(width, ts, TIMESTAMPTZ '2000-01-01 00:00+00')`, which yields the same buckets.
Each bucket in the range is returned, with value NULL and zero counts where there was no
data: a gap stays a gap, nothing is interpolated.

Time in range: a sample stands for the device's expected reporting interval, so
`in_range_s = min(bucket width, in-range samples x expected_interval_s)`. A gap therefore
counts as neither in nor out of range. It is computed from raw rows on both backends (the
aggregates carry no per-limit counts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

Conn = psycopg.AsyncConnection[DictRow]
Bucket = Literal["1m", "5m", "15m", "1h", "1d"]
Agg = Literal["avg", "min", "max", "last", "count"]

BUCKET_SECONDS: Final[dict[str, int]] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)
_CONTINUOUS_AGGREGATES: Final = {"1h": "readings_1h", "1d": "readings_1d"}
CSV_CHUNK_ROWS: Final = 5000


@dataclass(frozen=True, slots=True)
class Limits:
    """The acceptable band for a metric, from the device's rules. Either side may be open."""

    low: float | None
    high: float | None
    rule_ids: tuple[str, ...]


def bucket_floor(ts: datetime, width_s: int) -> datetime:
    """date_bin(width, ts, 2000-01-01 UTC) in Python, exact to the microsecond."""
    us = (ts - ORIGIN) // timedelta(microseconds=1)
    width_us = width_s * 1_000_000
    return ORIGIN + timedelta(microseconds=(us // width_us) * width_us)


def bucket_window(start: datetime, end: datetime, width_s: int) -> tuple[datetime, datetime]:
    """[first bucket start, end of the last bucket overlapping [start, end))."""
    first = bucket_floor(start, width_s)
    last = bucket_floor(end - timedelta(microseconds=1), width_s)
    return first, last + timedelta(seconds=width_s)


# --- raw ----------------------------------------------------------------------------------


async def raw_page(
    conn: Conn,
    *,
    device_id: str,
    metric: str | None,
    start: datetime,
    end: datetime,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Rows in [start, end) ordered by (ts, metric), strictly after the keyset `after`."""
    where = [sql.SQL("device_id = %(d)s AND ts >= %(start)s AND ts < %(end)s")]
    if metric is not None:
        where.append(sql.SQL("metric = %(m)s"))
        if after is not None:
            where.append(sql.SQL("ts > %(a_ts)s"))
    elif after is not None:
        where.append(sql.SQL("(ts, metric) > (%(a_ts)s, %(a_m)s)"))
    query = sql.SQL(
        "SELECT ts, metric, value, seq, received_at, ts_estimated FROM readings"
        " WHERE {where} ORDER BY ts, metric LIMIT %(limit)s"
    ).format(where=sql.SQL(" AND ").join(where))
    cur = await conn.execute(
        query,
        {
            "d": device_id,
            "m": metric,
            "start": start,
            "end": end,
            "a_ts": after[0] if after else None,
            "a_m": after[1] if after else None,
            "limit": limit,
        },
    )
    return await cur.fetchall()


# --- downsampled --------------------------------------------------------------------------

_RAW_AGG = """
WITH agg AS (
    SELECT {bucket_fn} AS bucket,
           avg(value) AS avg, min(value) AS min, max(value) AS max,
           (array_agg(value ORDER BY ts DESC))[1] AS last,
           count(value) AS count, count(*) AS samples,
           count(*) FILTER (WHERE (%(low)s::float8 IS NULL OR value >= %(low)s)
                              AND (%(high)s::float8 IS NULL OR value <= %(high)s)
                              AND value IS NOT NULL) AS in_range_count
    FROM readings
    WHERE device_id = %(d)s AND metric = %(m)s AND ts >= %(a)s AND ts < %(b)s
    GROUP BY 1
)
SELECT g.bucket, agg.avg, agg.min, agg.max, agg.last, agg.count, agg.samples,
       agg.in_range_count
FROM generate_series(%(a)s::timestamptz, %(b)s::timestamptz - %(w)s::interval, %(w)s::interval)
     AS g(bucket)
LEFT JOIN agg ON agg.bucket = g.bucket
ORDER BY g.bucket
"""

_CAGG = """
SELECT g.bucket, c.avg, c.min, c.max, c.last, c.count, c.samples
FROM generate_series(%(a)s::timestamptz, %(b)s::timestamptz - %(w)s::interval, %(w)s::interval)
     AS g(bucket)
LEFT JOIN {view} c ON c.bucket = g.bucket AND c.device_id = %(d)s AND c.metric = %(m)s
ORDER BY g.bucket
"""

_IN_RANGE = """
SELECT date_bin(%(w)s::interval, ts, TIMESTAMPTZ '2000-01-01 00:00+00') AS bucket,
       count(*) AS in_range_count
FROM readings
WHERE device_id = %(d)s AND metric = %(m)s AND ts >= %(a)s AND ts < %(b)s
  AND value IS NOT NULL
  AND (%(low)s::float8 IS NULL OR value >= %(low)s)
  AND (%(high)s::float8 IS NULL OR value <= %(high)s)
GROUP BY 1
"""

_BUCKET_FN = {
    "postgres": "date_bin(%(w)s::interval, ts, TIMESTAMPTZ '2000-01-01 00:00+00')",
    "timescaledb": "time_bucket(%(w)s::interval, ts)",
}


async def bucket_page(
    conn: Conn,
    *,
    backend: str,
    device_id: str,
    metric: str,
    bucket: str,
    agg: str,
    a: datetime,
    b: datetime,
    limits: Limits | None,
    interval_s: int,
) -> list[dict[str, Any]]:
    """One point per bucket in [a, b) (both aligned): value of `agg`, counts, time in range."""
    width_s = BUCKET_SECONDS[bucket]
    params: dict[str, Any] = {
        "d": device_id,
        "m": metric,
        "a": a,
        "b": b,
        "w": timedelta(seconds=width_s),
        "low": limits.low if limits else None,
        "high": limits.high if limits else None,
    }
    view = _CONTINUOUS_AGGREGATES.get(bucket) if backend == "timescaledb" else None
    if view is not None:
        cur = await conn.execute(sql.SQL(_CAGG).format(view=sql.Identifier(view)), params)
        rows = await cur.fetchall()
        in_range: dict[datetime, int] = {}
        if limits is not None:
            cur = await conn.execute(_IN_RANGE.encode(), params)
            in_range = {r["bucket"]: int(r["in_range_count"]) for r in await cur.fetchall()}
        for r in rows:
            r["in_range_count"] = in_range.get(r["bucket"], 0) if r["samples"] else None
    else:
        query = sql.SQL(_RAW_AGG).format(bucket_fn=sql.SQL(_BUCKET_FN[backend]))
        cur = await conn.execute(query, params)
        rows = await cur.fetchall()
    return [_point(r, agg, width_s, limits, interval_s) for r in rows]


def _point(
    r: Mapping[str, Any], agg: str, width_s: int, limits: Limits | None, interval_s: int
) -> dict[str, Any]:
    samples = int(r["samples"] or 0)
    count = int(r["count"] or 0)
    value: float | int | None = count if agg == "count" else r[agg] if count else None
    n_in: int | None = None
    in_s: float | None = None
    if limits is not None and count:
        n_in = int(r["in_range_count"] or 0)
        in_s = float(min(width_s, n_in * interval_s))
    return {
        "ts": r["bucket"],
        "value": None if value is None else float(value) if agg != "count" else value,
        "count": count,
        "samples": samples,
        "in_range_count": n_in,
        "in_range_s": in_s,
    }


# --- limits -------------------------------------------------------------------------------


def limits_from_rules(
    rules: Sequence[Mapping[str, Any]], *, device: Mapping[str, Any], metric: str
) -> Limits | None:
    """The band the enabled threshold rules for this device and metric allow, or None.

    Reads rule bodies as the alert engine defines them (alerts/rules.py): `kind`
    `threshold` with `op` above/below/outside and `high`/`low`, or `cumulative` with `op`
    and `limit`; `scope` (domain, profiles, exclude_profiles, region, site_ids,
    device_ids) must match the device, and `overrides[profile]` replaces fields for the
    device's profile. Several rules give the tightest band (e.g. heat and freeze).
    """
    low: float | None = None
    high: float | None = None
    used: list[str] = []
    for rule in rules:
        body = rule.get("body")
        if not isinstance(body, Mapping) or body.get("enabled") is False:
            continue
        override = (body.get("overrides") or {}).get(device.get("profile") or "")
        if isinstance(override, Mapping):
            body = {**body, **override}
        if body.get("metric") != metric or not _scope_matches(body.get("scope") or {}, device):
            continue
        r_low, r_high = _bounds(body)
        if r_low is None and r_high is None:
            continue
        used.append(str(rule["rule_id"]))
        if r_low is not None:
            low = r_low if low is None else max(low, r_low)
        if r_high is not None:
            high = r_high if high is None else min(high, r_high)
    if not used:
        return None
    return Limits(low, high, tuple(used))


def _scope_matches(scope: Mapping[str, Any], device: Mapping[str, Any]) -> bool:
    profile = device.get("profile") or ""
    return (
        scope.get("domain") in (None, device.get("domain"))
        and (not scope.get("profiles") or profile in scope["profiles"])
        and profile not in (scope.get("exclude_profiles") or ())
        and scope.get("region") in (None, device.get("region"))
        and (not scope.get("site_ids") or device.get("site_id") in scope["site_ids"])
        and (not scope.get("device_ids") or device.get("device_id") in scope["device_ids"])
    )


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _bounds(body: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(low, high) of the acceptable band a rule implies."""
    op = body.get("op")
    if body.get("kind") == "threshold":
        high = _num(body.get("high")) if op in ("above", "outside") else None
        low = _num(body.get("low")) if op in ("below", "outside") else None
        return low, high
    if body.get("kind") == "cumulative":
        limit = _num(body.get("limit"))
        return (None, limit) if op == "above" else (limit, None) if op == "below" else (None, None)
    return None, None


async def device_limits(conn: Conn, *, device: Mapping[str, Any], metric: str) -> Limits | None:
    """Limits of `metric` for `device` (a row of store.get_device) from the enabled rules."""
    cur = await conn.execute(
        "SELECT rule_id, body FROM rules WHERE enabled AND (region IS NULL OR region = %(r)s)"
        " AND body->>'metric' = %(m)s ORDER BY rule_id",
        {"r": device.get("region"), "m": metric},
    )
    rules = await cur.fetchall()
    return limits_from_rules(rules, device=device, metric=metric)


class LimitsIndex:
    """The enabled rules that bound a metric, by metric: many devices' limits at once
    (the latest-values endpoints) from one query."""

    def __init__(self, rules: Sequence[Mapping[str, Any]]) -> None:
        self._by_metric: dict[str, list[Mapping[str, Any]]] = {}
        self._by_site: set[str] = set()  # metrics with a rule scoped to sites
        self._by_device: set[str] = set()  # ... or to devices
        for rule in rules:
            body = rule.get("body") or {}
            metric = body.get("metric")
            if not isinstance(metric, str):
                continue
            self._by_metric.setdefault(metric, []).append(rule)
            scope = body.get("scope") or {}
            if scope.get("site_ids"):
                self._by_site.add(metric)
            if scope.get("device_ids"):
                self._by_device.add(metric)
        # Devices alike in what scopes look at share their limits.
        self._memo: dict[tuple[Any, ...], Limits | None] = {}

    def limits(self, device: Mapping[str, Any], metric: str) -> Limits | None:
        key = (
            metric,
            device.get("domain"),
            device.get("profile"),
            device.get("region"),
            device.get("site_id") if metric in self._by_site else None,
            device.get("device_id") if metric in self._by_device else None,
        )
        if key not in self._memo:
            rules = [
                r
                for r in self._by_metric.get(metric, ())
                if r.get("region") in (None, device.get("region"))
            ]
            self._memo[key] = (
                limits_from_rules(rules, device=device, metric=metric) if rules else None
            )
        return self._memo[key]


async def limits_index(conn: Conn) -> LimitsIndex:
    cur = await conn.execute(
        "SELECT rule_id, body, region FROM rules WHERE enabled AND body ? 'metric' ORDER BY rule_id"
    )
    return LimitsIndex(await cur.fetchall())


# --- CSV export ---------------------------------------------------------------------------


def _csv_value(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _csv_line(values: list[object]) -> str:
    # Every field is a number, a timestamp, a boolean or a catalogue/device id
    # ([A-Za-z0-9_-]), so none needs quoting.
    return ",".join(_csv_value(v) for v in values) + "\n"


async def stream_raw_csv(
    pool: AsyncConnectionPool[Conn],
    *,
    device_id: str,
    metric: str | None,
    start: datetime,
    end: datetime,
    after: tuple[datetime, str] | None,
) -> AsyncIterator[str]:
    """The whole range in chunks: one short keyset query per chunk, no connection held
    between chunks and never more than a chunk in memory."""
    yield "ts,device_id,metric,value,seq,received_at,ts_estimated\n"
    while True:
        async with pool.connection() as conn:
            rows = await raw_page(
                conn,
                device_id=device_id,
                metric=metric,
                start=start,
                end=end,
                after=after,
                limit=CSV_CHUNK_ROWS,
            )
        if not rows:
            return
        yield "".join(
            _csv_line(
                [
                    r["ts"],
                    device_id,
                    r["metric"],
                    r["value"],
                    r["seq"],
                    r["received_at"],
                    r["ts_estimated"],
                ]
            )
            for r in rows
        )
        if len(rows) < CSV_CHUNK_ROWS:
            return
        after = (rows[-1]["ts"], rows[-1]["metric"])


async def stream_bucket_csv(
    pool: AsyncConnectionPool[Conn],
    *,
    backend: str,
    device_id: str,
    metric: str,
    bucket: str,
    agg: str,
    a: datetime,
    b: datetime,
    limits: Limits | None,
    interval_s: int,
) -> AsyncIterator[str]:
    yield "bucket,device_id,metric,agg,value,count,samples,in_range_count,in_range_s\n"
    step = timedelta(seconds=BUCKET_SECONDS[bucket] * CSV_CHUNK_ROWS)
    while a < b:
        chunk_end = min(b, a + step)
        async with pool.connection() as conn:
            points = await bucket_page(
                conn,
                backend=backend,
                device_id=device_id,
                metric=metric,
                bucket=bucket,
                agg=agg,
                a=a,
                b=chunk_end,
                limits=limits,
                interval_s=interval_s,
            )
        yield "".join(
            _csv_line(
                [
                    p["ts"],
                    device_id,
                    metric,
                    agg,
                    p["value"],
                    p["count"],
                    p["samples"],
                    p["in_range_count"],
                    p["in_range_s"],
                ]
            )
            for p in points
        )
        a = chunk_end
