"""Property-based fuzz of the payload parser (hypothesis), wider than the one in
test_ingest_payloads.py: every channel, hostile topics, structured near-valid payloads,
and the spool's record format (what is spooled is what is replayed)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import CATALOGUE, DeviceInfo, RawMessage, Reason
from ingest.payloads import Limits, parse_message
from ingest.spool import SpooledMessage, decode_all, encode

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
DEVICES = {
    "fridge-1": DeviceInfo("fridge-1", "coldchain", "s", "r", "fridge", 60),
    "bin-1": DeviceInfo("bin-1", "waste"),
    "tap-1": DeviceInfo("tap-1", "water"),
}
LIMITS = Limits(max_batch_samples=20, max_payload_bytes=4096)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: they must never be stored
    | st.text(max_size=12)
    | st.sampled_from(["'; DROP TABLE readings;--", "\x00", "1e400", "NaN", "💥"])
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=25,
)
timestamps = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.text(max_size=30),
    st.none(),
)
metric_names = st.sampled_from(
    [*sorted({m for metrics in CATALOGUE.values() for m in metrics}), "x", "", "temp_c'"]
)
samples = st.fixed_dictionaries(
    {"values": st.dictionaries(metric_names, scalars, max_size=5)},
    optional={"ts": timestamps, "seq": st.integers() | st.text(max_size=3), "extra": json_like},
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["bag_sealed", "bag_stored", "bag_collected", "door", "x"])},
    optional={
        "ts": timestamps,
        "bag_id": st.text(max_size=200) | st.integers(),
        "category": st.sampled_from(["infectious", "pathological", "x"]),
        "weight_kg": st.floats() | st.integers() | st.text(max_size=4),
        "department": st.text(max_size=20),
    },
)
topics = st.one_of(
    st.builds(
        "hm/v1/{}/{}/{}".format,
        st.sampled_from(["coldchain", "waste", "water", "mars", ""]),
        st.sampled_from(list(DEVICES)) | st.text(max_size=70),
        st.sampled_from(["telemetry", "event", "status", "x"]),
    ),
    st.text(max_size=100),
)


def _body(doc: object) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        return repr(doc).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.binary(max_size=200),
    samples.map(_body),
    st.fixed_dictionaries({"batch": st.lists(samples | json_like, max_size=25)}).map(_body),
    events.map(_body),
    st.fixed_dictionaries({"online": scalars}, optional={"ts": timestamps}).map(_body),
    json_like.map(_body),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4000, 5000).map(lambda n: b'{"values":{"temp_c":1},"p":"' + b"x" * n + b'"}'),
)


@settings(max_examples=1500, deadline=None)
@given(topics, bodies)
def test_parser_never_raises_and_every_message_is_stored_or_rejected_with_a_reason(topic, body):
    msg = RawMessage(topic=topic, payload=body, received_at=NOW)
    out = parse_message(msg, now=NOW, lookup=DEVICES.get, limits=LIMITS)
    assert out.readings or out.events or out.status or out.rejections
    for rej in out.rejections:
        assert isinstance(rej.reason, Reason) and rej.detail
        assert rej.topic == topic
    for r in out.readings:
        assert r.device_id in DEVICES
        assert r.metric in CATALOGUE[DEVICES[r.device_id].domain]
        if r.value is not None:
            entry = CATALOGUE[DEVICES[r.device_id].domain][r.metric]
            assert math.isfinite(r.value) and entry.in_range(r.value)
        assert r.ts <= NOW + timedelta(seconds=LIMITS.max_future_skew_s)
        assert r.ts.tzinfo is not None
    assert len(out.readings) <= LIMITS.max_batch_samples * 5
    for e in out.events:
        assert e.device_id in DEVICES and (e.bag_id is None or 0 < len(e.bag_id) <= 128)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            SpooledMessage,
            st.text(max_size=80),
            st.binary(max_size=500),
            st.datetimes(
                min_value=datetime(1971, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ),
            st.integers(0, 255),
        ),
        max_size=20,
    ),
    st.integers(0, 40),
)
def test_spool_records_round_trip_and_a_torn_tail_is_cut(messages, cut):
    data = b"".join(encode(m) for m in messages)
    back, valid = decode_all(data)
    assert back == messages and valid == len(data)
    if messages and cut:
        torn, _ = decode_all(data[: max(0, len(data) - cut)])
        assert torn == messages[: len(torn)] and len(torn) < len(messages)
