"""Every endpoint of the HTTP API against the real database, through the ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from api.provisioning import verify_device_password
from tests.test_api_support import (
    USER_PASSWORD,
    ApiEnv,
    api_env,
    assert_problem,
    db,
    seed_alert,
    seed_site_device,
)

__all__ = ["api_env"]  # the fixture, re-exported for pytest

T0 = datetime(2026, 11, 20, tzinfo=UTC)


async def test_health_ready_and_metrics_answer_without_credentials(api_env: ApiEnv) -> None:
    async with api_env.client() as c:
        assert (await c.get("/healthz")).json()["status"] == "ok"
        ready = await c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"] == "ok"
        text = (await c.get("/metrics")).text
    assert "healthmon_api_database_up 1" in text
    assert "# TYPE healthmon_alerts gauge" in text


async def test_metrics_include_the_ingest_sources_and_alerts_by_state(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    site_id, device_id = await seed_site_device(api_env.dsn, uid, region="r-metrics")
    await seed_alert(api_env.dsn, device_id, site_id, "r-metrics")

    def broken() -> str:
        raise RuntimeError("source failed")

    api_env.app.state.metrics_sources = (
        broken,
        lambda: "healthmon_ingest_messages_total 42\n",
    )
    try:
        async with api_env.client() as c:
            text = (await c.get("/metrics")).text
    finally:
        api_env.app.state.metrics_sources = ()
    assert "healthmon_ingest_messages_total 42" in text
    assert 'healthmon_alerts{state="firing",severity="critical"}' in text


async def test_readyz_is_503_when_the_broker_check_fails(api_env: ApiEnv) -> None:
    async def broker_down() -> bool:
        return False

    api_env.app.state.readiness_checks = {"broker": broker_down}
    try:
        async with api_env.client() as c:
            resp = await c.get("/readyz")
    finally:
        api_env.app.state.readiness_checks = {}
    assert resp.status_code == 503
    assert resp.json()["checks"] == {"database": "ok", "broker": "unavailable"}


async def test_unknown_route_and_wrong_method_are_problem_documents(api_env: ApiEnv) -> None:
    async with api_env.client("admin") as c:
        assert_problem(await c.get("/api/v1/no-such-thing"), 404)
        assert_problem(await c.delete("/api/v1/sites"), 405)
        assert_problem(await c.get("/api/v1/devices/nope-nope"), 404)


async def test_site_crud(api_env: ApiEnv, uid: Callable[[str], str]) -> None:
    site_id = uid("site")
    async with api_env.client("admin") as c:
        resp = await c.post(
            "/api/v1/sites",
            json={"site_id": site_id, "name": "市疾控", "kind": "clinic", "region": "r1"},
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["region"] == "r1"
        assert_problem(
            await c.post("/api/v1/sites", json={"site_id": site_id, "region": "r1"}), 409
        )
        resp = await c.patch(f"/api/v1/sites/{site_id}", json={"address": "人民路 1 号"})
        assert resp.json()["address"] == "人民路 1 号"
        assert (await c.get(f"/api/v1/sites/{site_id}")).json()["name"] == "市疾控"
        listed = (await c.get("/api/v1/sites", params={"region": "r1"})).json()
        assert site_id in [s["site_id"] for s in listed["items"]]
        bad = assert_problem(await c.post("/api/v1/sites", json={"site_id": "x y"}), 422)
    names = {p["name"] for p in bad["invalid_params"]}
    assert {"body.site_id", "body.region"} <= names


async def test_site_list_pages_with_a_cursor(api_env: ApiEnv, uid: Callable[[str], str]) -> None:
    region = uid("region")
    async with api_env.client("admin") as c:
        for _ in range(5):
            await c.post("/api/v1/sites", json={"site_id": uid("s"), "region": region})
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"region": region, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/api/v1/sites", params=params)).json()
            seen += [s["site_id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert_problem(await c.get("/api/v1/sites", params={"cursor": "!!bad"}), 422)
    assert len(seen) == 5 == len(set(seen))


async def test_device_crud_returns_the_mqtt_password_once(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    site_id, device_id = uid("site"), uid("fridge")
    async with api_env.client("admin") as c:
        await c.post("/api/v1/sites", json={"site_id": site_id, "region": "r1"})
        resp = await c.post(
            "/api/v1/devices",
            json={
                "device_id": device_id,
                "domain": "coldchain",
                "site_id": site_id,
                "profile": "fridge",
                "expected_interval_s": 300,
            },
        )
        assert resp.status_code == 201, resp.text
        created = resp.json()
        assert created["mqtt"]["username"] == device_id
        assert created["mqtt"]["topic_prefix"] == f"hm/v1/coldchain/{device_id}/"
        password = created["mqtt"]["password"]
        got = (await c.get(f"/api/v1/devices/{device_id}")).json()
        assert "mqtt" not in got and got["region"] == "r1"
        resp = await c.patch(f"/api/v1/devices/{device_id}", json={"enabled": False})
        assert resp.json()["enabled"] is False
        listed = (await c.get("/api/v1/devices", params={"site_id": site_id})).json()
        assert [d["device_id"] for d in listed["items"]] == [device_id]
        assert_problem(
            await c.post(
                "/api/v1/devices",
                json={"device_id": uid("d"), "domain": "coldchain", "site_id": "no-site"},
            ),
            422,
        )
        assert_problem(
            await c.post("/api/v1/devices", json={"device_id": device_id, "domain": "air"}), 409
        )
        async with await db(api_env.dsn) as conn:
            cur = await conn.execute(
                "SELECT mqtt_password_hash FROM devices WHERE device_id = %s", (device_id,)
            )
            row = await cur.fetchone()
        assert row is not None and password not in row["mqtt_password_hash"]
        assert row["mqtt_password_hash"].startswith("$7$")
        assert verify_device_password(row["mqtt_password_hash"], password)
        assert (await c.delete(f"/api/v1/devices/{device_id}")).status_code == 204
        assert_problem(await c.get(f"/api/v1/devices/{device_id}"), 404)


async def test_latest_is_per_metric_with_online_state(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    _, device_id = await seed_site_device(api_env.dsn, uid, region="r1")
    async with await db(api_env.dsn) as conn:
        await conn.execute(
            "INSERT INTO latest_readings (device_id, metric, ts, value, received_at) VALUES"
            " (%s, 'temp_c', %s, 5.5, %s), (%s, 'door_open', %s, 0, %s)",
            (device_id, T0, T0, device_id, T0, T0),
        )
        await conn.execute(
            "UPDATE devices SET online = true, last_seen = %s WHERE device_id = %s",
            (T0, device_id),
        )
    async with api_env.client("viewer") as c:
        body = (await c.get(f"/api/v1/devices/{device_id}/latest")).json()
    assert body["online"] is True
    assert {m["metric"]: m["value"] for m in body["metrics"]} == {"temp_c": 5.5, "door_open": 0}
    assert {m["metric"]: m["unit"] for m in body["metrics"]}["temp_c"] == "°C"
    async with api_env.client("viewer") as c:
        page = (await c.get("/api/v1/latest", params={"region": "r1", "limit": 5000})).json()
    mine = [d for d in page["items"] if d["device_id"] == device_id]
    assert len(mine) == 1 and len(mine[0]["metrics"]) == 2


async def test_raw_readings_page_with_keyset_cursor_and_csv(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    _, device_id = await seed_site_device(api_env.dsn, uid, region="r1")
    async with await db(api_env.dsn) as conn:
        await conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, received_at)"
            " SELECT %s + i * interval '1 minute', %s, m, i, now()"
            " FROM generate_series(0, 9) i, unnest(ARRAY['temp_c', 'rh_pct']) m",
            (T0, device_id),
        )
    params = {
        "device_id": device_id,
        "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(),
    }
    async with api_env.client("viewer") as c:
        got: list[tuple[str, str]] = []
        cursor = None
        while True:
            page = (
                await c.get(
                    "/api/v1/readings",
                    params=params | {"limit": 3} | ({"cursor": cursor} if cursor else {}),
                )
            ).json()
            got += [(p["ts"], p["metric"]) for p in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(got) == 20 == len(set(got))
        assert got == sorted(got, key=lambda x: (datetime.fromisoformat(x[0]), x[1]))
        only = (await c.get("/api/v1/readings", params=params | {"metric": "temp_c"})).json()
        assert [p["value"] for p in only["items"]] == [float(i) for i in range(10)]
        csv = await c.get("/api/v1/readings", params=params | {"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("ts,device_id,metric,value")
    assert len(lines) == 21


async def test_readings_parameters_are_validated(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    _, device_id = await seed_site_device(api_env.dsn, uid, region="r1")
    base = {"device_id": device_id}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("query.start", {"start": "2026-11-23T00:00:00Z", "end": "2026-11-22T00:00:00Z"}),
        ("query.bucket", {"bucket": "2h", "metric": "temp_c"}),
        ("query.agg", {"bucket": "1h", "agg": "median", "metric": "temp_c"}),
        ("query.agg", {"agg": "avg", "metric": "temp_c"}),
        ("query.limit", {"limit": 100_001}),
        ("query.metric", {"bucket": "1h"}),
        ("query.start", {"start": "2026-11-23T00:00:00"}),
        ("query.end", {"start": "2000-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
        ("query.format", {"format": "xml"}),
        ("query.cursor", {"cursor": "eyJ4Ijp9"}),
    ]
    async with api_env.client("viewer") as c:
        for name, extra in cases:
            body = assert_problem(await c.get("/api/v1/readings", params=base | extra), 422)
            assert name in [p["name"] for p in body["invalid_params"]] or name in body["detail"]
        body = assert_problem(
            await c.get("/api/v1/readings", params=base | {"metric": "co2_ppm"}), 422
        )
        assert "coldchain" in body["detail"]
        assert_problem(await c.get("/api/v1/readings", params={"device_id": "ghost"}), 404)


async def test_alerts_list_detail_and_ack(api_env: ApiEnv, uid: Callable[[str], str]) -> None:
    site_id, device_id = await seed_site_device(api_env.dsn, uid, region="r-alerts")
    alert_id = await seed_alert(api_env.dsn, device_id, site_id, "r-alerts")
    async with api_env.client("operator") as c:
        page = (
            await c.get("/api/v1/alerts", params={"device_id": device_id, "state": "firing"})
        ).json()
        assert [a["id"] for a in page["items"]] == [alert_id]
        item = page["items"][0]
        assert item["rule_id"] == "coldchain.heat" and item["threshold"] == 8.0
        none = await c.get("/api/v1/alerts", params={"device_id": device_id, "severity": "info"})
        assert none.json()["items"] == []
        assert_problem(await c.post(f"/api/v1/alerts/{alert_id}/ack", json={"note": ""}), 422)
        resp = await c.post(f"/api/v1/alerts/{alert_id}/ack", json={"note": "门已关好"})
        assert resp.status_code == 200, resp.text
        detail = resp.json()
        assert detail["state"] == "acknowledged"
        assert detail["acknowledged_by"].startswith("key:")
        assert [e["kind"] for e in detail["timeline"]][-1] == "acknowledged"
        assert_problem(await c.post(f"/api/v1/alerts/{alert_id}/ack", json={"note": "x"}), 409)
        got = (await c.get(f"/api/v1/alerts/{alert_id}")).json()
        assert got["state"] == "acknowledged"
        assert_problem(await c.get(f"/api/v1/alerts/{'0' * 8}-0000-0000-0000-{'0' * 12}"), 404)
        assert_problem(await c.get("/api/v1/alerts/not-a-uuid"), 422)


async def test_alert_stream_resumes_from_last_event_id(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    site_id, device_id = await seed_site_device(api_env.dsn, uid, region="r-sse")
    first = await seed_alert(api_env.dsn, device_id, site_id, "r-sse")
    async with await db(api_env.dsn) as conn:
        cur = await conn.execute("SELECT id FROM alert_events WHERE alert_id = %s", (first,))
        row = await cur.fetchone()
    assert row is not None
    before = row["id"] - 1
    async with api_env.client("viewer") as c:
        resp = await c.get(
            "/api/v1/alerts/stream",
            params={"max_events": 1},
            headers={"Last-Event-ID": str(before)},
        )
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert f"id: {row['id']}\nevent: alert\n" in resp.text
    assert first in resp.text


async def test_alert_stream_is_woken_by_notify(api_env: ApiEnv, uid: Callable[[str], str]) -> None:
    """The stream waits (poll 30 s in this app) and is woken by NOTIFY within moments."""
    site_id, device_id = await seed_site_device(api_env.dsn, uid, region="r-sse")
    async with api_env.client("viewer") as c:
        task = asyncio.create_task(c.get("/api/v1/alerts/stream", params={"max_events": 1}))
        await asyncio.sleep(0.5)
        alert_id = await seed_alert(api_env.dsn, device_id, site_id, "r-sse")
        async with await db(api_env.dsn) as conn:
            await conn.execute("NOTIFY healthmon_alert_events")
        resp = await asyncio.wait_for(task, 10)
    assert alert_id in resp.text


async def test_rules_crud_validates_with_the_engine_model_and_notifies(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    rule_id = uid("test.heat").lower()
    body = {
        "kind": "threshold",
        "metric": "temp_c",
        "op": "above",
        "high": 8.0,
        "for_s": 600,
        "scope": {"domain": "coldchain"},
    }
    async with await db(api_env.dsn) as listener:
        await listener.execute("LISTEN healthmon_rules")
        async with api_env.client("admin") as c:
            resp = await c.post("/api/v1/rules", json={"rule_id": rule_id, "body": body})
            assert resp.status_code == 201, resp.text
            assert resp.json()["body"]["high"] == 8.0
            gen = listener.notifies(timeout=5, stop_after=1)
            assert [n.channel async for n in gen] == ["healthmon_rules"]
            bad = await c.put(
                f"/api/v1/rules/{rule_id}", json={"body": {**body, "op": "above", "high": None}}
            )
            assert_problem(bad, 422)
            resp = await c.put(f"/api/v1/rules/{rule_id}", json={"body": {**body, "high": 9.0}})
            assert resp.json()["version"] == 2
            assert (await c.get(f"/api/v1/rules/{rule_id}")).json()["body"]["high"] == 9.0
            listed = (await c.get("/api/v1/rules")).json()["items"]
            assert rule_id in [r["rule_id"] for r in listed]
            assert (await c.delete(f"/api/v1/rules/{rule_id}")).status_code == 204
            assert_problem(await c.get(f"/api/v1/rules/{rule_id}"), 404)


async def test_silences_create_list_delete(api_env: ApiEnv) -> None:
    now = datetime.now(UTC)
    async with api_env.client("operator") as c:
        resp = await c.post(
            "/api/v1/silences",
            json={
                "matchers": {"region": "r-silence", "domain": "water"},
                "ends_at": (now + timedelta(hours=2)).isoformat(),
                "reason": "管网检修",
            },
        )
        assert resp.status_code == 201, resp.text
        silence = resp.json()
        assert silence["owner"].startswith("key:")
        active = (await c.get("/api/v1/silences", params={"active": "true"})).json()["items"]
        assert silence["id"] in [s["id"] for s in active]
        assert_problem(
            await c.post(
                "/api/v1/silences",
                json={
                    "matchers": {"region": "r"},
                    "starts_at": now.isoformat(),
                    "ends_at": (now - timedelta(hours=1)).isoformat(),
                    "reason": "x",
                },
            ),
            422,
        )
        assert_problem(
            await c.post(
                "/api/v1/silences",
                json={"matchers": {}, "ends_at": now.isoformat(), "reason": "x"},
            ),
            422,
        )
        assert (await c.delete(f"/api/v1/silences/{silence['id']}")).status_code == 204
        assert_problem(await c.delete(f"/api/v1/silences/{silence['id']}"), 404)


async def test_rejected_list_filters(api_env: ApiEnv, uid: Callable[[str], str]) -> None:
    _, device_id = await seed_site_device(api_env.dsn, uid, region="r1")
    async with await db(api_env.dsn) as conn:
        for reason in ("bad_json", "unknown_metric", "bad_json"):
            await conn.execute(
                "INSERT INTO rejected (received_at, topic, device_id, reason, payload,"
                " payload_size) VALUES (now(), %s, %s, %s, %s, 3)",
                (f"hm/v1/coldchain/{device_id}/telemetry", device_id, reason, b"{x\xff"),
            )
    async with api_env.client("viewer") as c:
        page = (
            await c.get("/api/v1/rejected", params={"device_id": device_id, "reason": "bad_json"})
        ).json()
        assert len(page["items"]) == 2
        assert page["items"][0]["payload"].startswith("{x")
        page = (await c.get("/api/v1/rejected", params={"device_id": device_id, "limit": 2})).json()
        nxt = await c.get(
            "/api/v1/rejected", params={"device_id": device_id, "cursor": page["next_cursor"]}
        )
        assert len(nxt.json()["items"]) == 1


async def test_login_sets_a_session_cookie_that_authenticates_like_a_key(
    api_env: ApiEnv,
) -> None:
    async with api_env.client() as c:
        assert_problem(
            await c.post("/api/v1/login", json={"username": api_env.user, "password": "nope"}),
            401,
        )
        assert_problem(
            await c.post("/api/v1/login", json={"username": "ghost", "password": "nope"}), 401
        )
        resp = await c.post(
            "/api/v1/login", json={"username": api_env.user, "password": USER_PASSWORD}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "username": api_env.user,
            "kind": "user",
            "role": "operator",
            "regions": [],
        }
        set_cookie = resp.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower()
        assert (await c.get("/api/v1/me")).json()["username"] == api_env.user
        assert (await c.get("/api/v1/alerts")).status_code == 200
        stolen = c.cookies.get("healthmon_session")
        assert (await c.post("/api/v1/logout")).status_code == 204
        assert_problem(await c.get("/api/v1/me"), 401)
    # The cookie issued before logout no longer works (session epoch bumped).
    async with api_env.client(cookies={"healthmon_session": stolen or ""}) as c:
        assert_problem(await c.get("/api/v1/me"), 401)
    async with api_env.client(cookies={"healthmon_session": "forged.cookie"}) as c:
        assert_problem(await c.get("/api/v1/me"), 401)


async def test_openapi_document_is_served(api_env: ApiEnv) -> None:
    async with api_env.client() as c:
        doc = (await c.get("/openapi.json")).json()
    paths = set(doc["paths"])
    for path in (
        "/api/v1/sites", "/api/v1/sites/{site_id}", "/api/v1/devices",
        "/api/v1/devices/{device_id}", "/api/v1/devices/{device_id}/latest",
        "/api/v1/readings", "/api/v1/alerts", "/api/v1/alerts/{alert_id}",
        "/api/v1/alerts/{alert_id}/ack", "/api/v1/alerts/stream", "/api/v1/rules",
        "/api/v1/rules/{rule_id}", "/api/v1/silences", "/api/v1/silences/{silence_id}",
        "/api/v1/rejected", "/healthz", "/readyz", "/metrics",
    ):  # fmt: skip
        assert path in paths, path
