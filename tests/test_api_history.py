"""Readings history: downsampled series computed independently, gaps kept as gaps, time in
range against the rule limits, and the same numbers on TimescaleDB and plain PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from asgi_lifespan import LifespanManager

from api import create_app
from api.history import Limits, LimitsIndex, bucket_floor, bucket_window, limits_from_rules
from tests.test_api_support import ApiEnv, api_env, db, make_keys, settings_for

__all__ = ["api_env"]

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
MINUTES = 36 * 60
GAP = range(600, 780)  # minutes 600..779 (10:00-13:00) have no data at all
NULLS = {5, 6, 700 + 200}  # sensor errors


def _value(i: int) -> float | None:
    if i in NULLS:
        return None
    # Multiples of 1/8: sums are exact in binary floating point whatever the order.
    return 2.0 + (i % 80) / 8.0


def _rows(device_id: str) -> list[tuple[Any, ...]]:
    return [
        (T0 + timedelta(minutes=i), device_id, "temp_c", _value(i), T0)
        for i in range(MINUTES)
        if i not in GAP
    ]


HEAT_RULE: dict[str, Any] = {
    "kind": "threshold", "metric": "temp_c", "op": "above", "high": 8.0,
    "scope": {"domain": "coldchain"},
}  # fmt: skip
FREEZE_RULE: dict[str, Any] = {
    "kind": "threshold", "metric": "temp_c", "op": "below", "low": 2.5,
    "scope": {"domain": "coldchain", "profiles": ["hist_fridge"]},
}  # fmt: skip


async def _seed(conn: psycopg.AsyncConnection[Any], device_id: str, site_id: str) -> None:
    await conn.execute(
        "INSERT INTO sites (site_id, region) VALUES (%s, 'hist') ON CONFLICT DO NOTHING",
        (site_id,),
    )
    await conn.execute(
        "INSERT INTO devices (device_id, domain, site_id, profile, expected_interval_s)"
        " VALUES (%s, 'coldchain', %s, 'hist_fridge', 60)",
        # a profile of its own: the default packs (seeded by other tests into the same
        # database) must not add their fridge limits to this device's
        (device_id, site_id),
    )
    for rule_id, body in ((f"heat.{device_id}", HEAT_RULE), (f"freeze.{device_id}", FREEZE_RULE)):
        scoped = {**body, "scope": {**body["scope"], "device_ids": [device_id]}}
        await conn.execute(
            "INSERT INTO rules (rule_id, body) VALUES (%s, %s)",
            (rule_id.lower(), psycopg.types.json.Jsonb(scoped)),
        )
    # Plain INSERT (the TimescaleDB test engine has no COPY), 200 rows a statement: the
    # WASM engine aborts on much larger messages.
    rows = _rows(device_id)
    for k in range(0, len(rows), 200):
        await conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, received_at)"
            " SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::float8[],"
            " %s::timestamptz[])",
            [list(col) for col in zip(*rows[k : k + 200], strict=True)],
        )


def _expected(bucket_s: int, agg: str) -> list[tuple[datetime, float | None, int, int, int]]:
    """(bucket, value, count, samples, in-range count) computed in Python."""
    n_buckets = max(1, math.ceil(MINUTES * 60 / bucket_s))
    members: list[list[int]] = [[] for _ in range(n_buckets)]
    for i in range(MINUTES):
        if i not in GAP:
            members[i * 60 // bucket_s].append(i)
    out = []
    for k, mins in enumerate(members):
        vals = [v for i in mins if (v := _value(i)) is not None]
        value: float | None
        if not vals:
            value = None if agg != "count" else 0
        elif agg == "avg":
            value = sum(vals) / len(vals)
        elif agg == "min":
            value = min(vals)
        elif agg == "max":
            value = max(vals)
        elif agg == "last":
            value = _value(mins[-1])
        else:
            value = len(vals)
        in_range = sum(1 for v in vals if 2.5 <= v <= 8.0)
        out.append((T0 + timedelta(seconds=k * bucket_s), value, len(vals), len(mins), in_range))
    return out


async def _series(client: Any, device_id: str, bucket: str, agg: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {
            "device_id": device_id,
            "metric": "temp_c",
            "start": T0.isoformat(),
            "end": (T0 + timedelta(minutes=MINUTES)).isoformat(),
            "bucket": bucket,
            "agg": agg,
            "limit": 1000,
        } | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/api/v1/readings", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@pytest.fixture(scope="module")
async def pg_device(api_env: ApiEnv) -> str:
    device_id = "hist-pg-0001"
    async with await db(api_env.dsn) as conn:
        await _seed(conn, device_id, "hist-site")
    return device_id


@pytest.mark.parametrize("bucket,bucket_s", [("5m", 300), ("1h", 3600), ("1d", 86400)])
async def test_downsampled_series_matches_an_independent_computation(
    api_env: ApiEnv, pg_device: str, bucket: str, bucket_s: int
) -> None:
    async with api_env.client("viewer") as c:
        for agg in ("avg", "min", "max", "last", "count"):
            got = await _series(c, pg_device, bucket, agg)
            want = _expected(bucket_s, agg)
            assert len(got) == len(want)
            for g, (ts, value, count, samples, n_in) in zip(got, want, strict=True):
                assert datetime.fromisoformat(g["ts"]) == ts
                assert _close(g["value"], value), (agg, g, value)
                assert (g["count"], g["samples"]) == (count, samples)
                if count:
                    assert g["in_range_count"] == n_in
                    assert g["in_range_s"] == min(bucket_s, n_in * 60)


async def test_gaps_are_gaps_not_interpolated(api_env: ApiEnv, pg_device: str) -> None:
    async with api_env.client("viewer") as c:
        got = await _series(c, pg_device, "1h", "avg")
    gap_hours = [g for g in got if g["samples"] == 0]
    assert [datetime.fromisoformat(g["ts"]).hour for g in gap_hours] == [10, 11, 12]
    assert all(g["value"] is None and g["in_range_s"] is None for g in gap_hours)


async def test_limits_come_from_the_devices_rules(api_env: ApiEnv, pg_device: str) -> None:
    async with api_env.client("viewer") as c:
        resp = await c.get(
            "/api/v1/readings",
            params={
                "device_id": pg_device, "metric": "temp_c", "bucket": "1h",
                "start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat(),
            },
        )  # fmt: skip
    limits = resp.json()["limits"]
    assert (limits["low"], limits["high"]) == (2.5, 8.0)
    assert len(limits["rule_ids"]) == 2


async def test_latest_values_carry_the_same_limits_as_the_history(
    api_env: ApiEnv, pg_device: str
) -> None:
    """What a dashboard shows next to a last value: the band of the device's rules, the
    same as the readings endpoint draws on the chart; none for an unbounded metric."""
    async with await db(api_env.dsn) as conn:
        await conn.execute(
            "INSERT INTO latest_readings (device_id, metric, ts, value, received_at)"
            " VALUES (%s, 'temp_c', %s, 9.1, %s), (%s, 'battery_v', %s, 3.6, %s)"
            " ON CONFLICT (device_id, metric) DO NOTHING",
            (pg_device, T0, T0, pg_device, T0, T0),
        )
    async with api_env.client("viewer") as c:
        one = (await c.get(f"/api/v1/devices/{pg_device}/latest")).json()
        many = (await c.get("/api/v1/latest", params={"region": "hist"})).json()
    limits = {m["metric"]: m["limits"] for m in one["metrics"]}
    assert (limits["temp_c"]["low"], limits["temp_c"]["high"]) == (2.5, 8.0)
    assert len(limits["temp_c"]["rule_ids"]) == 2
    assert limits["battery_v"] is None
    (same,) = [d for d in many["items"] if d["device_id"] == pg_device]
    assert {m["metric"]: m["limits"] for m in same["metrics"]} == limits


async def test_csv_export_streams_the_whole_range(api_env: ApiEnv, pg_device: str) -> None:
    async with api_env.client("viewer") as c:
        raw = await c.get(
            "/api/v1/readings",
            params={
                "device_id": pg_device, "start": T0.isoformat(),
                "end": (T0 + timedelta(days=2)).isoformat(), "format": "csv", "limit": 5,
            },
        )  # fmt: skip
        hourly = await c.get(
            "/api/v1/readings",
            params={
                "device_id": pg_device, "metric": "temp_c", "bucket": "1h", "agg": "max",
                "start": T0.isoformat(), "end": (T0 + timedelta(hours=36)).isoformat(),
                "format": "csv",
            },
        )  # fmt: skip
    assert len(raw.text.strip().splitlines()) == 1 + len(_rows(pg_device))
    lines = hourly.text.strip().splitlines()
    assert lines[0].startswith("bucket,device_id,metric,agg,value")
    assert len(lines) == 1 + 36
    assert lines[11].split(",")[4:7] == ["", "0", "0"]  # 10:00: a gap


@pytest.mark.timescaledb
async def test_timescaledb_and_plain_postgres_give_the_same_numbers(
    api_env: ApiEnv, pg_device: str, timescale_dsn: str
) -> None:
    device_id = pg_device  # the same id and data on both engines
    # prepare_threshold=None: the WASM engine keeps prepared statements across connections.
    async with await psycopg.AsyncConnection.connect(
        timescale_dsn, autocommit=True, prepare_threshold=None
    ) as conn:
        await _seed(conn, device_id, "hist-site")
    keys = await make_keys(timescale_dsn, "hist")
    app = create_app(
        settings_for(timescale_dsn), pool_min_size=1, pool_max_size=1,
        listen_notifications=False, prepare_threshold=None,
    )  # fmt: skip
    async with LifespanManager(app):
        assert app.state.backend == "timescaledb"
        ts_env = ApiEnv(app, timescale_dsn, "hist", "other", keys)
        async with ts_env.client("viewer") as ts, api_env.client("viewer") as pg:
            for bucket in ("1m", "15m", "1h", "1d"):
                for agg in ("avg", "min", "max", "last", "count"):
                    a = await _series(ts, device_id, bucket, agg)
                    b = await _series(pg, device_id, bucket, agg)
                    assert len(a) == len(b)
                    for x, y in zip(a, b, strict=True):
                        assert x["ts"] == y["ts"]
                        assert _close(x["value"], y["value"]), (bucket, agg, x, y)
                        for key in ("count", "samples", "in_range_count", "in_range_s"):
                            assert x[key] == y[key], (bucket, agg, key, x, y)
            raw_ts = await ts.get(
                "/api/v1/readings",
                params={"device_id": device_id, "start": T0.isoformat(), "limit": 50,
                        "end": (T0 + timedelta(hours=2)).isoformat()},
            )  # fmt: skip
            raw_pg = await pg.get(
                "/api/v1/readings",
                params={"device_id": device_id, "start": T0.isoformat(), "limit": 50,
                        "end": (T0 + timedelta(hours=2)).isoformat()},
            )  # fmt: skip
    assert raw_ts.json()["items"] == raw_pg.json()["items"]
    assert raw_ts.json()["next_cursor"] is not None


# --- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts,width_s,want",
    [
        ("2026-11-23T12:07:59+00:00", 300, "2026-11-23T12:05:00+00:00"),
        ("2026-11-23T23:59:00+00:00", 86400, "2026-11-23T00:00:00+00:00"),
        ("2026-11-24T07:59:00+08:00", 86400, "2026-11-23T00:00:00+00:00"),
        ("1999-12-31T23:59:00+00:00", 3600, "1999-12-31T23:00:00+00:00"),
        ("2026-11-23T12:15:00+00:00", 900, "2026-11-23T12:15:00+00:00"),
    ],
)  # fmt: skip
def test_bucket_floor_matches_date_bin(ts: str, width_s: int, want: str) -> None:
    assert bucket_floor(datetime.fromisoformat(ts), width_s) == datetime.fromisoformat(want)


def test_bucket_window_covers_every_overlapping_bucket() -> None:
    a, b = bucket_window(
        datetime(2026, 1, 1, 0, 30, tzinfo=UTC), datetime(2026, 1, 1, 2, 0, tzinfo=UTC), 3600
    )
    assert (a, b) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 2, tzinfo=UTC))


DEVICE = {"device_id": "f1", "domain": "coldchain", "profile": "freezer", "region": "r",
          "site_id": "s"}  # fmt: skip


@pytest.mark.parametrize(
    "bodies,want",
    [
        ([HEAT_RULE], Limits(None, 8.0, ("r0",))),
        ([FREEZE_RULE], None),  # fridge-only rule, device is a freezer
        ([{**HEAT_RULE, "overrides": {"freezer": {"high": -15.0}}}], Limits(None, -15.0, ("r0",))),
        ([{**HEAT_RULE, "op": "outside", "low": 2.0}], Limits(2.0, 8.0, ("r0",))),
        ([{"kind": "cumulative", "metric": "temp_c", "op": "below", "limit": -0.5}],
         Limits(-0.5, None, ("r0",))),
        ([{**HEAT_RULE, "scope": {"domain": "air"}}], None),
        ([{**HEAT_RULE, "metric": "rh_pct"}], None),
        ([{"kind": "no_data"}], None),
        ([HEAT_RULE, {**HEAT_RULE, "high": 7.0}], Limits(None, 7.0, ("r0", "r1"))),
    ],
)  # fmt: skip
def test_limits_from_rule_bodies(bodies: list[dict[str, Any]], want: Limits | None) -> None:
    rules = [{"rule_id": f"r{i}", "body": b} for i, b in enumerate(bodies)]
    assert limits_from_rules(rules, device=DEVICE, metric="temp_c") == want


def test_many_devices_limits_follow_their_scopes() -> None:
    """The index behind the latest-values endpoints shares limits between devices alike,
    but never across a scope that tells them apart (region, site, device)."""
    rules = [
        {"rule_id": "all", "body": HEAT_RULE, "region": None},
        {"rule_id": "north", "body": {**HEAT_RULE, "high": 7.0}, "region": "north"},
        {"rule_id": "site", "body": {**HEAT_RULE, "high": 6.0, "scope": {"site_ids": ["s2"]}},
         "region": None},
    ]  # fmt: skip
    index = LimitsIndex(rules)
    at = [
        index.limits({**DEVICE, "region": region, "site_id": site}, "temp_c")
        for region, site in [("r", "s"), ("north", "s"), ("r", "s2"), ("r", "s"), ("r", "s3")]
    ]
    assert [(lim.high if lim else None) for lim in at] == [8.0, 7.0, 6.0, 8.0, 8.0]
    assert index.limits(DEVICE, "rh_pct") is None
