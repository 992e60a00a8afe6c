"""The intake end to end, against the machine's Mosquitto and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from healthmon.app import build_ingest
from healthmon.settings import Settings
from ingest import Reason
from ingest.pipeline import Ingest
from tests.mqtt_helpers import Publisher, register_device, scalar, wait_for

IngestFactory = Callable[..., Any]
# Recent event times (epoch ms): test retention is 60 days.
T0 = (int(time.time()) // 3600 - 48) * 3600 * 1000


def make_settings(pg_dsn: str, broker: tuple[str, int], **overrides: Any) -> Settings:
    host, port = broker
    base: dict[str, Any] = {
        "database_url": pg_dsn,
        "mqtt_url": f"mqtt://{host}:{port}",
        "mqtt_client_id": f"hm-test-{uuid.uuid4().hex[:8]}",
        "mqtt_session_expiry_s": 120,
        "retention_days": 60,
        "flush_interval_s": 0.1,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
async def ingest_factory(pg_dsn, mqtt_broker) -> AsyncIterator[IngestFactory]:
    """Start in-process intakes; each is stopped (drained) at the end of the test."""
    running: list[tuple[Ingest, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Ingest:
        pipeline = build_ingest(make_settings(pg_dsn, mqtt_broker, **overrides))
        await pipeline.__aenter__()
        task = asyncio.create_task(pipeline.run(), name="test.ingest")
        running.append((pipeline, task))
        return pipeline

    yield start
    for pipeline, task in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pipeline.__aexit__(None, None, None)


@pytest.fixture
def publisher(mqtt_broker):
    pub = Publisher(*mqtt_broker)
    yield pub
    pub.close()


async def count(dsn: str, sql: str, *params: Any) -> int:
    return int(await scalar(dsn, sql, params or None))


async def test_single_and_batch_readings_are_stored(pg_dsn, ingest_factory, publisher, uid):
    dev = uid("fridge")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    await ingest_factory()
    publisher.publish(
        f"hm/v1/coldchain/{dev}/telemetry",
        {"ts": T0 + 3600_000, "seq": 1, "values": {"temp_c": 5.3, "door_open": 0}},
    )
    publisher.publish(
        f"hm/v1/coldchain/{dev}/telemetry",
        {
            "batch": [
                {"ts": T0, "seq": 7, "values": {"temp_c": 4.9}},
                {"ts": T0 + 300_000, "seq": 8, "values": {"temp_c": 9.1}},
            ]
        },
    )
    sql = "SELECT count(*) FROM readings WHERE device_id = %s"
    await wait_for(lambda: _eq(count(pg_dsn, sql, dev), 4))
    latest = await scalar(
        pg_dsn,
        "SELECT value FROM latest_readings WHERE device_id = %s AND metric = 'temp_c'",
        (dev,),
    )
    assert latest == 5.3  # the newest by event time, although the batch arrived later


async def _eq(coro: Any, expected: Any) -> bool:
    return bool(await coro == expected)


async def test_every_reason_code_is_recorded_and_good_values_kept(
    pg_dsn, ingest_factory, publisher, uid
):
    dev, waste, off = uid("fr"), uid("bin"), uid("off")
    await register_device(pg_dsn, dev, "coldchain")
    await register_device(pg_dsn, waste, "waste")
    await register_device(pg_dsn, off, "coldchain")
    await scalar(
        pg_dsn, "UPDATE devices SET enabled = false WHERE device_id = %s RETURNING 1", (off,)
    )
    ghost = uid("ghost")
    await ingest_factory(device_rate_limit_per_s=1.0, device_rate_burst=40)
    t = f"hm/v1/coldchain/{dev}/telemetry"
    cases: list[tuple[str, Any, Reason]] = [
        (f"hm/v1/mars/{dev}/telemetry", {"values": {"temp_c": 1}}, Reason.BAD_TOPIC),
        (t, b"\xff\xfe", Reason.BAD_ENCODING),
        (t, b"{oops", Reason.BAD_JSON),
        (t, {"values": []}, Reason.SCHEMA),
        (t, b'{"values":{"temp_c":1},"pad":"' + b"x" * 270_000 + b'"}', Reason.TOO_LARGE),
        (f"hm/v1/coldchain/{ghost}/telemetry", {"values": {"temp_c": 1}}, Reason.UNKNOWN_DEVICE),
        (f"hm/v1/coldchain/{off}/telemetry", {"values": {"temp_c": 1}}, Reason.DEVICE_DISABLED),
        (f"hm/v1/pool/{dev}/telemetry", {"values": {"ph": 7}}, Reason.DOMAIN_MISMATCH),
        (t, {"values": {"temp_c": 3.0, "smell": 2}}, Reason.UNKNOWN_METRIC),
        (
            t,
            {"ts": "2026-11-23T12:00:01+08:00", "values": {"temp_c": 99, "rh_pct": 50}},
            Reason.OUT_OF_PHYSICAL_RANGE,
        ),
        (t, {"ts": "2099-01-01T00:00:00Z", "values": {"temp_c": 4}}, Reason.FUTURE_TIMESTAMP),
        (t, {"ts": "2001-01-01T00:00:00Z", "values": {"temp_c": 4}}, Reason.TOO_OLD),
        (f"hm/v1/waste/{waste}/event", {"type": "bag_teleported"}, Reason.UNKNOWN_EVENT),
    ]
    for topic, payload, _ in cases:
        publisher.publish(topic, payload)
    for i in range(60):  # a flood: more than the burst allows
        publisher.publish(
            f"hm/v1/waste/{waste}/telemetry", {"ts": T0 + i * 1000, "values": {"fill_pct": 10}}
        )

    async def reasons() -> set[str]:
        rows = await scalar(
            pg_dsn,
            "SELECT array_agg(DISTINCT reason) FROM rejected WHERE topic LIKE %s"
            " OR topic LIKE %s OR topic LIKE %s OR topic LIKE %s",
            (f"%/{dev}/%", f"%/{ghost}/%", f"%/{off}/%", f"%/{waste}/%"),
        )
        return set(rows or [])

    expected = {str(c[2]) for c in cases} | {str(Reason.RATE_LIMITED)}
    await wait_for(lambda: _eq(reasons(), expected), timeout_s=20)
    # The good values of the partly bad messages are stored.
    stored = await scalar(
        pg_dsn,
        "SELECT array_agg(metric || '=' || value ORDER BY metric)"
        " FROM readings WHERE device_id = %s",
        (dev,),
    )
    assert sorted(stored) == ["rh_pct=50", "temp_c=3"]
    # The record carries topic, bounded payload and detail.
    row = await scalar(
        pg_dsn,
        "SELECT row(payload_size, length(payload), detail) FROM rejected"
        " WHERE reason = 'too_large' AND device_id = %s",
        (dev,),
    )
    assert int(row[0]) > 256 * 1024 and int(row[1]) <= 4096 and "exceeds" in row[2]
    limited = await count(
        pg_dsn,
        "SELECT count(*) FROM rejected WHERE device_id = %s AND reason = 'rate_limited'",
        waste,
    )
    kept = await count(pg_dsn, "SELECT count(*) FROM readings WHERE device_id = %s", waste)
    assert limited > 0 and limited + kept == 60  # every flooded message is accounted for


async def test_redelivered_message_and_resent_batch_are_stored_once(
    pg_dsn, ingest_factory, publisher, uid
):
    dev = uid("box")
    await register_device(pg_dsn, dev, "coldchain", profile="cold_box")
    await ingest_factory()
    batch = {
        "batch": [{"ts": T0 + i * 300_000, "seq": i, "values": {"temp_c": 5.0}} for i in range(50)]
    }
    single = {"ts": "2026-11-23T12:00:00+08:00", "seq": 99, "values": {"temp_c": 5.5}}
    for _ in range(3):  # QoS 1 redelivery and a device re-sending its backlog look alike
        publisher.publish(f"hm/v1/coldchain/{dev}/telemetry", batch)
        publisher.publish(f"hm/v1/coldchain/{dev}/telemetry", single)
    sql = "SELECT count(*) FROM readings WHERE device_id = %s"
    await wait_for(lambda: _eq(count(pg_dsn, sql, dev), 51))
    # Give later copies every chance to be (wrongly) stored, then check again.
    marker = uid("m")
    await register_device(pg_dsn, marker, "air")
    publisher.publish(f"hm/v1/air/{marker}/telemetry", {"values": {"co2_ppm": 500}})
    await wait_for(lambda: _eq(count(pg_dsn, sql, marker), 1))
    assert await count(pg_dsn, sql, dev) == 51


async def test_status_updates_online_state_and_last_seen(pg_dsn, ingest_factory, publisher, uid):
    dev = uid("fr")
    await register_device(pg_dsn, dev, "coldchain")
    await ingest_factory()
    publisher.publish(f"hm/v1/coldchain/{dev}/status", {"online": True})
    await wait_for(
        lambda: scalar(pg_dsn, "SELECT online FROM devices WHERE device_id = %s", (dev,))
    )
    publisher.publish(f"hm/v1/coldchain/{dev}/status", {"online": False})
    await wait_for(
        lambda: _eq(
            scalar(pg_dsn, "SELECT online FROM devices WHERE device_id = %s", (dev,)), False
        )
    )
    assert await scalar(
        pg_dsn, "SELECT last_seen IS NOT NULL FROM devices WHERE device_id = %s", (dev,)
    )


async def test_auto_registering_domain_adds_unknown_devices(pg_dsn, ingest_factory, publisher, uid):
    dev = uid("lobby")
    await ingest_factory(auto_register_domains="air")
    publisher.publish(f"hm/v1/air/{dev}/telemetry", {"values": {"co2_ppm": 640}})
    await wait_for(
        lambda: scalar(pg_dsn, "SELECT auto_registered FROM devices WHERE device_id = %s", (dev,))
    )
    assert await count(pg_dsn, "SELECT count(*) FROM readings WHERE device_id = %s", dev) == 1


async def test_events_are_stored_once(pg_dsn, ingest_factory, publisher, uid):
    dev = uid("bin")
    await register_device(pg_dsn, dev, "waste")
    await ingest_factory()
    ev = {
        "ts": "2026-11-23T08:15:00+08:00",
        "type": "bag_sealed",
        "bag_id": "B-1",
        "category": "infectious",
        "weight_kg": 2.4,
        "department": "ICU",
    }
    publisher.publish(f"hm/v1/waste/{dev}/event", ev)
    publisher.publish(f"hm/v1/waste/{dev}/event", ev)
    publisher.publish(
        f"hm/v1/waste/{dev}/event", {**ev, "type": "bag_stored", "ts": "2026-11-23T08:20:00+08:00"}
    )
    sql = "SELECT count(*) FROM events WHERE device_id = %s"
    await wait_for(lambda: _eq(count(pg_dsn, sql, dev), 2))
    weight = await scalar(
        pg_dsn,
        "SELECT attrs->>'weight_kg' FROM events WHERE device_id = %s AND type = 'bag_sealed'",
        (dev,),
    )
    assert weight == "2.4"


async def test_every_qos_and_mqtt5_properties_reach_the_database(
    pg_dsn, ingest_factory, mqtt_broker, uid
):
    """The intake decodes plain QoS 0/1 PUBLISH packets itself and leaves the rest (QoS 2,
    MQTT 5 properties) to paho: each kind is stored, with its payload intact."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    dev = uid("qos")
    await register_device(pg_dsn, dev, "coldchain", profile="fridge")
    await ingest_factory()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=uid("pub5"), protocol=paho.MQTTv5)
    pub.connect(*mqtt_broker)
    pub.loop_start()
    try:
        topic = f"hm/v1/coldchain/{dev}/telemetry"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "application/json"
        props.UserProperty = ("firmware", "2.4.1")
        props.MessageExpiryInterval = 3600
        sent = [
            (0, None, 4.0),
            (1, None, 4.1),
            (2, None, 4.2),
            (1, props, 4.3),
            (2, props, 4.4),
        ]
        for i, (qos, properties, value) in enumerate(sent):
            body = orjson.dumps({"ts": T0 + i * 60_000, "seq": i, "values": {"temp_c": value}})
            pub.publish(topic, body, qos=qos, properties=properties).wait_for_publish(10)
        sql = "SELECT count(*) FROM readings WHERE device_id = %s"
        await wait_for(lambda: _eq(count(pg_dsn, sql, dev), len(sent)))
        values = await scalar(
            pg_dsn,
            "SELECT array_agg(value ORDER BY seq) FROM readings WHERE device_id = %s",
            (dev,),
        )
        assert values == [v for _, _, v in sent]
    finally:
        pub.disconnect()
        pub.loop_stop()
