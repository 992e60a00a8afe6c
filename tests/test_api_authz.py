"""The authorization matrix: every endpoint x (no key, a wrong key, each role, a key
limited to region A reaching into region B)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.test_api_support import (
    ApiEnv,
    api_env,
    assert_problem,
    db,
    seed_alert,
    seed_site_device,
)

__all__ = ["api_env"]

RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass
class World:
    """Things in region B (the limited keys' other region)."""

    site: str
    device: str
    alert: str
    rule: str
    a_device: str  # in region A, for the stream check
    a_site: str

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _rule_body(metric: str = "temp_c") -> dict[str, Any]:
    return {"kind": "threshold", "metric": metric, "op": "above", "high": 8.0}


@pytest.fixture(scope="module")
async def world(api_env: ApiEnv) -> AsyncIterator[World]:
    counter = iter(range(1000))

    def uid(prefix: str) -> str:
        return f"{prefix}-authz{next(counter)}-{uuid.uuid4().hex[:6]}"

    site, device = await seed_site_device(api_env.dsn, uid, region=api_env.other_region)
    a_site, a_device = await seed_site_device(api_env.dsn, uid, region=api_env.region)
    alert = await seed_alert(api_env.dsn, device, site, api_env.other_region)
    rule = uid("authz.rule").lower()
    async with await db(api_env.dsn) as conn:
        await conn.execute(
            "INSERT INTO rules (rule_id, body, region) VALUES (%s, %s::jsonb, %s)",
            (
                rule,
                f'{{"kind":"threshold","rule_id":"{rule}","metric":"temp_c","op":"above",'
                '"high":8}',
                api_env.other_region,
            ),
        )
    yield World(site, device, alert, rule, a_device, a_site)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    least: str  # the least role allowed
    body: Callable[[World, str], Any] | None = None
    params: Callable[[World], dict[str, Any]] | None = None


def _silence(w: World, region: str) -> dict[str, Any]:
    return {
        "matchers": {"region": region},
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "reason": "maintenance",
    }


CALLS = [
    Call("GET", "/api/v1/sites", "viewer"),
    Call("POST", "/api/v1/sites", "admin", lambda w, r: {"site_id": w.fresh("s"), "region": r}),
    Call("GET", "/api/v1/sites/{site}", "viewer"),
    Call("PATCH", "/api/v1/sites/{site}", "admin", lambda w, r: {"name": "renamed"}),
    Call("GET", "/api/v1/devices", "viewer"),
    Call(
        "POST",
        "/api/v1/devices",
        "admin",
        lambda w, r: {"device_id": w.fresh("d"), "domain": "air", "site_id": w.site},
    ),
    Call("GET", "/api/v1/devices/{device}", "viewer"),
    Call("PATCH", "/api/v1/devices/{device}", "admin", lambda w, r: {"name": "renamed"}),
    Call("DELETE", "/api/v1/devices/{fresh_device}", "admin"),
    Call("GET", "/api/v1/devices/{device}/latest", "viewer"),
    Call("GET", "/api/v1/latest", "viewer"),
    Call("GET", "/api/v1/readings", "viewer", params=lambda w: {"device_id": w.device}),
    Call("GET", "/api/v1/alerts", "viewer"),
    Call("GET", "/api/v1/alerts/{alert}", "viewer"),
    Call("POST", "/api/v1/alerts/{alert}/ack", "operator", lambda w, r: {"note": "on it"}),
    Call(
        "GET", "/api/v1/alerts/stream", "viewer", params=lambda w: {"max_events": 1, "after_id": 0}
    ),
    Call("GET", "/api/v1/rules", "viewer"),
    Call(
        "POST",
        "/api/v1/rules",
        "admin",
        lambda w, r: {"rule_id": w.fresh("r"), "body": _rule_body(), "region": r},
    ),
    Call("GET", "/api/v1/rules/{rule}", "viewer"),
    Call(
        "PUT",
        "/api/v1/rules/{rule}",
        "admin",
        lambda w, r: {"body": _rule_body(), "region": r},
    ),
    Call("DELETE", "/api/v1/rules/{fresh_rule}", "admin"),
    Call("GET", "/api/v1/silences", "viewer"),
    Call("POST", "/api/v1/silences", "operator", _silence),
    Call("DELETE", "/api/v1/silences/{fresh_silence}", "operator"),
    Call("GET", "/api/v1/rejected", "viewer"),
    Call("GET", "/api/v1/me", "viewer"),
    Call("POST", "/api/v1/logout", "viewer"),
]


async def _fresh(api_env: ApiEnv, w: World, what: str) -> str:
    """A new thing in region B, for a call that destroys its target."""
    async with await db(api_env.dsn) as conn:
        if what == "fresh_device":
            ident = w.fresh("d")
            await conn.execute(
                "INSERT INTO devices (device_id, domain, site_id) VALUES (%s, 'air', %s)",
                (ident, w.site),
            )
        elif what == "fresh_rule":
            ident = w.fresh("r")
            await conn.execute(
                "INSERT INTO rules (rule_id, body, region) VALUES (%s, '{}', %s)",
                (ident, api_env.other_region),
            )
        else:
            cur = await conn.execute(
                "INSERT INTO silences (matchers, starts_at, ends_at, owner, reason)"
                " VALUES (%s::jsonb, now(), now() + interval '1 hour', 't', 't') RETURNING id",
                (f'{{"region": "{api_env.other_region}"}}',),
            )
            row = await cur.fetchone()
            assert row is not None
            ident = str(row["id"])
    return ident


async def _request(api_env: ApiEnv, w: World, call: Call, key: str | None) -> Any:
    values = {"site": w.site, "device": w.device, "alert": w.alert, "rule": w.rule}
    for what in ("fresh_device", "fresh_rule", "fresh_silence"):
        if "{" + what + "}" in call.path:
            values[what] = await _fresh(api_env, w, what)
    path = call.path.format(**values)
    body = call.body(w, api_env.other_region) if call.body else None
    params = call.params(w) if call.params else None
    async with api_env.client(key) as c:
        return await c.request(call.method, path, json=body, params=params)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path}")
async def test_every_endpoint_needs_credentials(api_env: ApiEnv, world: World, call: Call) -> None:
    assert_problem(await _request(api_env, world, call, None), 401)
    assert_problem(await _request(api_env, world, call, "hm_0000_not-a-key"), 401)
    assert_problem(await _request(api_env, world, call, "garbage"), 401)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path}")
@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_each_role_gets_what_it_may(
    api_env: ApiEnv, world: World, call: Call, role: str
) -> None:
    resp = await _request(api_env, world, call, role)
    if RANK[role] >= RANK[call.least]:
        # Allowed: whatever the outcome (200, 201, 204, or 409 for a repeated ack), it is
        # not an authorization failure and not a server error.
        assert resp.status_code not in (401, 403), resp.text
        assert resp.status_code < 500, resp.text
    else:
        body = assert_problem(resp, 403)
        assert call.least in body["detail"]


# What the region-A admin key may see of region B: nothing. Lists come back without B's
# items; a B item is 404 (as if absent); creating something in B is 403 or 422.
_LISTS = {
    "/api/v1/sites": ("site_id", "site"),
    "/api/v1/devices": ("device_id", "device"),
    "/api/v1/latest": ("device_id", "device"),
    "/api/v1/alerts": ("id", "alert"),
    "/api/v1/rules": ("rule_id", "rule"),
}


@pytest.mark.parametrize(
    "call",
    [c for c in CALLS if c.path not in ("/api/v1/me", "/api/v1/logout", "/api/v1/alerts/stream")],
    ids=lambda c: f"{c.method} {c.path}",
)
async def test_region_limited_key_cannot_reach_another_region(
    api_env: ApiEnv, world: World, call: Call
) -> None:
    resp = await _request(api_env, world, call, f"admin@{api_env.region}")
    if call.method == "GET" and "{" not in call.path and call.params is None:
        assert resp.status_code == 200, resp.text
        items = resp.json()["items"]
        if call.path in _LISTS:
            field, attr = _LISTS[call.path]
            assert getattr(world, attr) not in [i[field] for i in items]
        for item in items:
            assert item.get("region") in (None, api_env.region), item
            if "matchers" in item:
                assert item["matchers"].get("region") == api_env.region
    else:
        assert resp.status_code in (403, 404, 422), resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")


async def test_region_limited_stream_only_carries_its_regions_alerts(
    api_env: ApiEnv, world: World
) -> None:
    async with await db(api_env.dsn) as conn:
        cur = await conn.execute("SELECT coalesce(max(id), 0) AS id FROM alert_events")
        row = await cur.fetchone()
    assert row is not None
    b_alert = await seed_alert(
        api_env.dsn, world.device, world.site, api_env.other_region, rule_id="stream.b"
    )
    a_alert = await seed_alert(api_env.dsn, world.a_device, world.a_site, api_env.region)
    async with api_env.client(f"viewer@{api_env.region}") as c:
        resp = await c.get("/api/v1/alerts/stream", params={"max_events": 1, "after_id": row["id"]})
    assert a_alert in resp.text
    assert b_alert not in resp.text


async def test_region_limited_key_works_inside_its_region(api_env: ApiEnv, world: World) -> None:
    async with api_env.client(f"admin@{api_env.region}") as c:
        assert (await c.get(f"/api/v1/devices/{world.a_device}")).status_code == 200
        resp = await c.post(
            "/api/v1/sites", json={"site_id": world.fresh("s"), "region": api_env.region}
        )
        assert resp.status_code == 201
        resp = await c.post("/api/v1/silences", json=_silence(world, api_env.region))
        assert resp.status_code == 201
        # A rule for every region is visible but not changeable by a limited key.
        resp = await c.post(
            "/api/v1/rules", json={"rule_id": world.fresh("r"), "body": _rule_body()}
        )
        assert_problem(resp, 403)
