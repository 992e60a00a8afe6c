"""Payload parsing and validation, table-driven with explicit times (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import DeviceInfo, RawMessage, Reason
from ingest.payloads import Limits, parse_message, parse_ts

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
DEVICES = {
    "fridge-1": DeviceInfo("fridge-1", "coldchain", "site-1", "r1", "fridge", 60),
    "off-1": DeviceInfo("off-1", "coldchain", enabled=False),
    "bin-1": DeviceInfo("bin-1", "waste"),
}


def parse(topic: str, payload: bytes | dict | list, limits: Limits | None = None):
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    msg = RawMessage(topic=topic, payload=body, received_at=NOW)
    return parse_message(msg, now=NOW, lookup=DEVICES.get, limits=limits or Limits())


T = "hm/v1/coldchain/fridge-1/telemetry"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("hm/v1/coldchain/fridge-1", {"values": {"temp_c": 5}}, Reason.BAD_TOPIC),
        ("hm/v1/mars/fridge-1/telemetry", {"values": {"temp_c": 5}}, Reason.BAD_TOPIC),
        ("hm/v1/coldchain/fr idge/telemetry", {"values": {"temp_c": 5}}, Reason.BAD_TOPIC),
        ("hm/v1/coldchain/fridge-1/gossip", {"values": {"temp_c": 5}}, Reason.BAD_TOPIC),
        ("hm/v1/coldchain/ghost-9/telemetry", {"values": {"temp_c": 5}}, Reason.UNKNOWN_DEVICE),
        ("hm/v1/coldchain/off-1/telemetry", {"values": {"temp_c": 5}}, Reason.DEVICE_DISABLED),
        ("hm/v1/air/fridge-1/telemetry", {"values": {"co2_ppm": 5}}, Reason.DOMAIN_MISMATCH),
        (T, b"\xff\xfe{}", Reason.BAD_ENCODING),
        (T, b"{not json", Reason.BAD_JSON),
        (T, b'{"values": {"temp_c": NaN}}', Reason.BAD_JSON),
        (T, b'{"values": {"temp_c": Infinity}}', Reason.BAD_JSON),
        (T, b"[" * 5000 + b"]" * 5000, Reason.BAD_JSON),
        (T, [1, 2], Reason.SCHEMA),
        (T, {"values": {}}, Reason.SCHEMA),
        (T, {"vals": {"temp_c": 1}}, Reason.SCHEMA),
        (T, {"values": {"temp_c": "hot"}}, Reason.SCHEMA),
        (T, {"values": {"temp_c": True}}, Reason.SCHEMA),
        (T, {"ts": "2026-11-23T12:00:00", "values": {"temp_c": 1}}, Reason.SCHEMA),
        (T, {"batch": [{"values": {"temp_c": 1}}]}, Reason.SCHEMA),
        (T, {"values": {"humidity": 40}}, Reason.UNKNOWN_METRIC),
        (T, {"values": {"temp_c": 61}}, Reason.OUT_OF_PHYSICAL_RANGE),
        (T, {"values": {"door_open": 0.5}}, Reason.OUT_OF_PHYSICAL_RANGE),
        (T, {"ts": "2026-11-23T05:00:00Z", "values": {"temp_c": 4}}, Reason.FUTURE_TIMESTAMP),
        (T, {"ts": 0, "values": {"temp_c": 4}}, Reason.TOO_OLD),
        (T, b'{"values": {"temp_c": 1}, "pad": "' + b"x" * 300_000 + b'"}', Reason.TOO_LARGE),
        (
            T,
            {"batch": [{"ts": 1763870400000 + i, "values": {"temp_c": 4}} for i in range(1001)]},
            Reason.TOO_LARGE,
        ),
        ("hm/v1/waste/bin-1/event", {"type": "bag_exploded"}, Reason.UNKNOWN_EVENT),
        ("hm/v1/waste/bin-1/event", {"type": "bag_stored"}, Reason.SCHEMA),
        (
            "hm/v1/waste/bin-1/event",
            {
                "type": "bag_sealed",
                "bag_id": "B1",
                "category": "radioactive",
                "weight_kg": 1,
                "department": "ICU",
            },
            Reason.SCHEMA,
        ),
        ("hm/v1/coldchain/fridge-1/status", {"online": "yes"}, Reason.SCHEMA),
    ],
)
def test_bad_input_is_rejected_with_its_reason(topic, payload, reason):
    out = parse(topic, payload)
    assert [r.reason for r in out.rejections] == [reason]
    assert out.readings == []
    assert out.rejections[0].detail


def test_partly_bad_message_keeps_its_good_values():
    out = parse(
        T,
        {
            "ts": "2026-11-23T12:00:00+08:00",
            "seq": 9,
            "values": {"temp_c": 5.5, "rh_pct": 140, "bogus": 1, "battery_v": None},
        },
    )
    assert {(r.metric, r.value) for r in out.readings} == {("temp_c", 5.5), ("battery_v", None)}
    assert sorted(r.reason for r in out.rejections) == [
        Reason.OUT_OF_PHYSICAL_RANGE,
        Reason.UNKNOWN_METRIC,
    ]
    assert all(r.ts == datetime(2026, 11, 23, 4, 0, tzinfo=UTC) for r in out.readings)


def test_batch_with_one_bad_sample_stores_the_others():
    out = parse(
        T,
        {
            "batch": [
                {"ts": 1763870400000, "seq": 7, "values": {"temp_c": 4.9}},
                {"seq": 8, "values": {"temp_c": 9.1}},
                {"ts": 1763870700000, "seq": 9, "values": {"temp_c": 9.4}},
            ]
        },
    )
    assert [r.seq for r in out.readings] == [7, 9]
    assert [r.reason for r in out.rejections] == [Reason.SCHEMA]
    assert "batch[1]" in out.rejections[0].detail


def test_sample_without_ts_uses_receive_time_and_says_so():
    out = parse(T, {"values": {"temp_c": 4}})
    assert out.readings[0].ts == NOW
    assert out.readings[0].ts_estimated is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-23T12:00:00+08:00", datetime(2026, 11, 23, 4, 0, tzinfo=UTC)),
        ("2026-11-23T04:00:00Z", datetime(2026, 11, 23, 4, 0, tzinfo=UTC)),
        (1763870400000, datetime(2025, 11, 23, 4, 0, tzinfo=UTC)),
        (1763870400123, datetime(2025, 11, 23, 4, 0, 0, 123000, tzinfo=UTC)),
    ],
)
def test_timestamps_rfc3339_and_epoch_ms(value, expected):
    assert parse_ts(value) == expected


def test_status_and_events_parse():
    st_ = parse("hm/v1/coldchain/fridge-1/status", {"online": False})
    assert st_.status is not None and st_.status.online is False and st_.status.ts == NOW
    ev = parse(
        "hm/v1/waste/bin-1/event",
        {
            "ts": "2026-11-23T08:15:00+08:00",
            "type": "bag_sealed",
            "bag_id": "B-42",
            "category": "infectious",
            "weight_kg": 2.4,
            "department": "ICU",
        },
    )
    assert ev.events[0].bag_id == "B-42"
    assert ev.events[0].attrs["weight_kg"] == 2.4
    assert ev.rejections == []


def test_auto_registering_domain_accepts_an_unknown_device():
    limits = Limits(auto_register_domains=frozenset({"air"}))
    out = parse("hm/v1/air/lobby-7/telemetry", {"values": {"co2_ppm": 800}}, limits)
    assert out.register is not None and out.register.domain == "air"
    assert len(out.readings) == 1


def _dumps(doc: object) -> bytes:
    # stdlib json: also writes integers beyond 64 bits, which devices could send
    return json.dumps(doc).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        json_values.map(_dumps),
        st.fixed_dictionaries(
            {"values": st.dictionaries(st.sampled_from(["temp_c", "rh_pct", "x"]), json_values)}
        ).map(_dumps),
        st.fixed_dictionaries({"batch": st.lists(json_values, max_size=5)}).map(_dumps),
    )
)
def test_parser_never_crashes_and_accounts_for_every_message(body):
    out = parse(T, body)
    # Every message yields something stored or something rejected: nothing vanishes.
    assert out.readings or out.rejections or out.events or out.status
    for r in out.readings:
        assert r.value is None or -100 <= r.value <= 60 or r.metric != "temp_c"


def test_future_skew_limit_is_configurable():
    ahead = (NOW + timedelta(minutes=30)).isoformat()
    assert parse(T, {"ts": ahead, "values": {"temp_c": 1}}).rejections
    relaxed = Limits(max_future_skew_s=3600)
    assert parse(T, {"ts": ahead, "values": {"temp_c": 1}}, relaxed).readings
