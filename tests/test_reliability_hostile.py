"""Hostile input end to end: every bad message is rejected with a reason and recorded,
SQL metacharacters are data (in the intake and in every API parameter), a flood from
one device is rate limited, memory stays bounded, and the service keeps running."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.mqtt_helpers import Publisher, register_device, scalar, wait_for
from tests.reliability_support import T0, Broker
from tests.test_api_support import ApiEnv, api_env, seed_site_device
from tests.test_ingest_pipeline import ingest_factory, publisher
from tests.test_reliability_db import _env, _start

__all__ = ["api_env", "ingest_factory", "publisher"]  # fixtures, re-exported for pytest

SQL = [
    "x'; DROP TABLE readings; --",
    "1 OR 1=1",
    '"; DELETE FROM devices; --',
    "%' OR '%'='",
    "$$; SELECT pg_sleep(5); $$",
    "a\\'b",
    "\x00nul",
    "Robert'); DROP TABLE alerts;--",
]


async def _eq(coro: Any, expected: Any) -> bool:
    return bool(await coro == expected)


async def _rejected(dsn: str, topic_like: str) -> dict[str, int]:
    rows = await scalar(
        dsn,
        "SELECT coalesce(jsonb_object_agg(reason, n), '{}') FROM"
        " (SELECT reason, count(*) AS n FROM rejected WHERE topic LIKE %s GROUP BY reason) r",
        (topic_like,),
    )
    return dict(rows)


async def test_malformed_payloads_are_rejected_with_a_reason_and_the_intake_keeps_going(
    pg_dsn, ingest_factory, publisher, uid
):
    dev = uid("hostile")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    await ingest_factory(device_rate_limit_per_s=0)
    t = f"hm/v1/coldchain/{dev}/telemetry"
    deep = b'{"values":{"temp_c":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    cases: list[tuple[Any, str]] = [
        (b'{"values":{"temp_c":1},"pad":"' + b"x" * 300_000 + b'"}', "too_large"),
        (deep, "bad_json"),  # nested past orjson's 1024 levels
        (b'{"values":{"temp_c":' + b'{"a":' * 500 + b"1" + b"}" * 500 + b"}}", "schema"),
        (b'{"values":{"temp_c":NaN}}', "bad_json"),
        (b'{"values":{"temp_c":Infinity}}', "bad_json"),
        (b'{"values":{"temp_c":-Infinity}}', "bad_json"),
        (b'{"values":{"temp_c":1e400}}', "bad_json"),  # orjson refuses out-of-range numbers
        (b'{"values":{"temp_c":"5"}}', "schema"),
        (b"\xc3\x28\xa0\xa1", "bad_encoding"),
        ("温度".encode("gbk"), "bad_encoding"),
        ({"batch": [{"ts": T0 + i, "values": {"temp_c": 5}} for i in range(1001)]}, "too_large"),
        ({"batch": []}, "schema"),
        (b"", "bad_json"),
        (b"[]", "schema"),
    ]
    # A NUL cannot be stored in a text column: the database refuses that one message,
    # which the pipeline then records as `schema` ("refused by the database").
    cases += [
        ({"values": {name: 1}}, "schema" if "\x00" in name else "unknown_metric") for name in SQL
    ]
    for body, _ in cases:
        publisher.publish(t, body)
    expected: dict[str, int] = {}
    for _, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    await wait_for(lambda: _eq(_rejected(pg_dsn, t), expected), timeout_s=20)
    # The metric names with SQL in them are stored verbatim as data (NUL is not
    # storable in text: the parser keeps what PostgreSQL accepts, the row says why).
    names = await scalar(
        pg_dsn,
        "SELECT array_agg(metric) FROM rejected WHERE topic = %s AND reason = 'unknown_metric'",
        (t,),
    )
    assert {n for n in SQL if "\x00" not in n} <= set(names)
    # Still running, still storing.
    publisher.publish(t, {"ts": T0, "values": {"temp_c": 4.5}})
    await wait_for(
        lambda: _eq(scalar(pg_dsn, "SELECT count(*) FROM readings WHERE device_id=%s", (dev,)), 1)
    )
    assert await scalar(pg_dsn, "SELECT to_regclass('readings') IS NOT NULL")


@pytest.mark.parametrize("level", ["fr'idge", "fr;dge", "fr%41", "fr idge", "冰箱", "a" * 65, "+"])
async def test_odd_topic_levels_are_rejected_as_bad_topic_and_recorded_verbatim(
    pg_dsn, ingest_factory, publisher, uid, level
):
    await ingest_factory()
    topic = f"hm/v1/coldchain/{level}/telemetry"
    if level == "+":  # wildcards are not allowed in a PUBLISH topic: the broker refuses it
        with pytest.raises(ValueError):
            publisher.client.publish(topic, b"{}", qos=1)
        return
    publisher.publish(topic, {"values": {"temp_c": 4}})
    await wait_for(
        lambda: scalar(pg_dsn, "SELECT reason FROM rejected WHERE topic = %s", (topic,)),
        timeout_s=15,
    )
    assert await scalar(pg_dsn, "SELECT reason FROM rejected WHERE topic = %s", (topic,)) == (
        "bad_topic"
    )


async def test_sql_metacharacters_in_event_fields_are_stored_as_data(
    pg_dsn, ingest_factory, publisher, uid
):
    dev = uid("bin")
    await register_device(pg_dsn, dev, "waste")
    await ingest_factory()
    for i, s in enumerate(x for x in SQL if "\x00" not in x):
        publisher.publish(
            f"hm/v1/waste/{dev}/event",
            {
                "ts": T0 + i * 1000,
                "type": "bag_sealed",
                "bag_id": s[:128],
                "category": "infectious",
                "weight_kg": 1.0,
                "department": s,
                s: s,  # an attribute named by the attacker
            },
        )
    n = len([x for x in SQL if "\x00" not in x])
    await wait_for(
        lambda: _eq(scalar(pg_dsn, "SELECT count(*) FROM events WHERE device_id=%s", (dev,)), n)
    )
    bags = await scalar(pg_dsn, "SELECT array_agg(bag_id) FROM events WHERE device_id=%s", (dev,))
    assert set(bags) == {x[:128] for x in SQL if "\x00" not in x}
    for table in ("readings", "devices", "alerts", "events"):
        assert await scalar(pg_dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,))


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_flood_of_oversized_and_rapid_messages_keeps_memory_bounded(pg_dsn, tmp_path, uid):
    """`healthmon ingest` under a flood: 300 payloads of ~250 KiB and 6000 rapid messages
    from one device; every message is accounted for (stored or rejected with a reason),
    peak RSS stays bounded, the worker answers SIGTERM cleanly."""
    dev, big = uid("flood"), uid("big")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    await register_device(pg_dsn, big, "coldchain", profile="fridge")
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 0\nmax_packet_size 300000")
    broker.start()
    env = _env(pg_dsn, broker, f"hm-flood-{uuid.uuid4().hex[:8]}", tmp_path / "spool")
    env.update(HEALTHMON_DEVICE_RATE_LIMIT_PER_S="20", HEALTHMON_DEVICE_RATE_BURST="100",
               HEALTHMON_QUEUE_MAX_MESSAGES="2000")  # fmt: skip
    log = tmp_path / "flood.log"
    proc = _start(env, log)
    try:
        await wait_for(lambda: "connected to" in log.read_text(), timeout_s=20)
        baseline = _vm_hwm_kb(proc.pid)
        pub = Publisher(*broker.address)
        pad = b"x" * 250_000
        for i in range(300):
            pub.publish(
                f"hm/v1/coldchain/{big}/telemetry",
                b'{"ts":%d,"values":{"temp_c":4},"pad":"' % (T0 + i) + pad + b'"}',
            )
        for i in range(6000):
            pub.client.publish(
                f"hm/v1/coldchain/{dev}/telemetry",
                b'{"ts":%d,"values":{"temp_c":4}}' % (T0 + i),
                qos=1,
            )
        pub.publish(f"hm/v1/coldchain/{dev}/telemetry", {"ts": T0 + 6000, "values": {"temp_c": 4}})
        pub.close()

        async def accounted() -> bool:
            stored = await scalar(
                pg_dsn, "SELECT count(*) FROM readings WHERE device_id=%s", (dev,)
            )
            limited = await scalar(
                pg_dsn,
                "SELECT count(*) FROM rejected WHERE device_id=%s AND reason='rate_limited'",
                (dev,),
            )
            return int(stored) + int(limited) == 6001

        await wait_for(accounted, timeout_s=60)
        by_reason = await scalar(
            pg_dsn,
            "SELECT jsonb_object_agg(reason, n) FROM (SELECT reason, count(*) AS n"
            " FROM rejected WHERE device_id=%s GROUP BY reason) r",
            (big,),
        )
        # "pad" is not a field of the contract; the flood past the burst is rate limited.
        assert set(by_reason) == {"schema", "rate_limited"}
        assert sum(by_reason.values()) == 300
        assert (
            await scalar(
                pg_dsn, "SELECT max(length(payload)) FROM rejected WHERE device_id=%s", (big,)
            )
            <= 4096
        )
        peak_mb = _vm_hwm_kb(proc.pid) / 1024
        print(f"flood: baseline {baseline / 1024:.0f} MiB, peak {peak_mb:.0f} MiB")
        assert peak_mb < baseline / 1024 + 250, f"peak RSS {peak_mb:.0f} MiB"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        broker.stop()
    assert code == 0


async def test_sql_metacharacters_in_every_api_parameter_are_refused_or_harmless(
    api_env: ApiEnv, uid: Callable[[str], str]
) -> None:
    _site_id, device_id = await seed_site_device(api_env.dsn, uid, region=api_env.region)
    before = await scalar(api_env.dsn, "SELECT count(*) FROM devices")
    async with api_env.client("admin") as c:
        for s in SQL:
            q = quote(s, safe="")  # as a path segment
            responses = [
                await c.get("/api/v1/readings", params={"device_id": s}),
                await c.get("/api/v1/readings", params={"device_id": device_id, "metric": s}),
                await c.get(
                    "/api/v1/readings",
                    params={"device_id": device_id, "metric": "temp_c", "bucket": s, "agg": s},
                ),
                await c.get("/api/v1/readings", params={"device_id": device_id, "start": s}),
                await c.get("/api/v1/readings", params={"device_id": device_id, "cursor": s}),
                await c.get("/api/v1/alerts", params={"site_id": s, "region": s}),
                await c.get("/api/v1/alerts", params={"device_id": s, "state": s}),
                await c.get("/api/v1/alerts", params={"cursor": s, "severity": s}),
                await c.get("/api/v1/sites", params={"region": s, "cursor": s}),
                await c.get("/api/v1/devices", params={"site_id": s, "region": s}),
                await c.get("/api/v1/latest", params={"site_id": s, "region": s}),
                await c.get(f"/api/v1/sites/{q}"),
                await c.get(f"/api/v1/devices/{q}"),
                await c.get(f"/api/v1/devices/{q}/latest"),
                await c.get(f"/api/v1/alerts/{q}"),
                await c.post(f"/api/v1/alerts/{q}/ack", json={"note": s}),
                await c.post(
                    "/api/v1/sites", json={"site_id": s, "name": s, "region": s, "address": s}
                ),
                await c.post("/api/v1/devices", json={"device_id": s, "domain": "coldchain"}),
                await c.patch(f"/api/v1/devices/{device_id}", json={"name": s, "profile": s}),
            ]
            for r in responses:
                assert r.status_code < 500, (r.request.url, r.status_code, r.text[:300])
                assert "syntax error" not in r.text.lower()
        # A name that went through is stored verbatim.
        ok = await c.get(f"/api/v1/devices/{device_id}")
        assert ok.status_code == 200
    assert await scalar(api_env.dsn, "SELECT count(*) FROM devices") >= before
    for table in ("readings", "devices", "alerts", "sites", "api_keys"):
        assert await scalar(api_env.dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,))
