"""The intake's own PUBLISH decoding (ingest/mqtt.py `_Client`), on hand-built packets:
what it decodes itself must match the wire format, and anything it does not handle
(properties, QoS 2, malformed packets) must take paho's path, which reports malformed
packets as protocol errors (the connection is dropped and the broker redelivers)."""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket

from ingest.mqtt import _Client

Got = list[tuple[str, bytes, int, int, bool, bool]]


def client(protocol: int) -> tuple[_Client, Got]:
    got: Got = []
    c = _Client(
        CallbackAPIVersion.VERSION2,
        deliver=lambda *a: got.append(a),
        protocol=protocol,
        manual_ack=True,
    )
    c.on_message = lambda _c, _u, m: got.append(  # paho's path ends here too
        (m.topic, bytes(m.payload), m.mid, m.qos, bool(m.retain), bool(m.dup))
    )
    return c, got


def publish(c: _Client, header: int, body: bytes) -> Any:
    c._in_packet = {"command": header, "packet": bytearray(body)}
    return c._handle_publish()


def body(
    topic: bytes, payload: bytes, *, mid: int | None = 7, props: bytes | None = b"\0"
) -> bytes:
    out = struct.pack("!H", len(topic)) + topic
    if mid is not None:
        out += struct.pack("!H", mid)
    if props is not None:
        out += props
    return out + payload


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311])
def test_plain_publish_packets_are_decoded(protocol: int) -> None:
    c, got = client(protocol)
    props = b"\0" if protocol == paho.MQTTv5 else None
    t = b"hm/v1/coldchain/f-1/telemetry"
    publish(c, 0x32, body(t, b'{"values":{}}', mid=513, props=props))  # QoS 1
    publish(c, 0x3B, body(t, b"x", mid=2, props=props))  # QoS 1, DUP, retain
    publish(c, 0x30, body(t, b"", mid=None, props=props))  # QoS 0, empty payload
    assert got == [
        (t.decode(), b'{"values":{}}', 513, 1, False, False),
        (t.decode(), b"x", 2, 1, True, True),
        (t.decode(), b"", 0, 0, False, False),
    ]


def test_mqtt5_properties_take_pahos_path_and_arrive_the_same() -> None:
    c, got = client(paho.MQTTv5)
    content_type = b"\x03" + struct.pack("!H", 16) + b"application/json"
    props = bytes([len(content_type)]) + content_type
    publish(c, 0x32, body(b"hm/v1/air/a-1/telemetry", b"{}", mid=9, props=props))
    assert got == [("hm/v1/air/a-1/telemetry", b"{}", 9, 1, False, False)]


def test_a_topic_that_is_not_utf8_is_delivered_for_rejection_not_dropped() -> None:
    c, got = client(paho.MQTTv5)
    publish(c, 0x32, body(b"hm/v1/\xff\xfe/telemetry", b"{}"))
    assert got and got[0][0].startswith("hm/v1/") and got[0][1] == b"{}"


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00",  # shorter than the topic length
        struct.pack("!H", 40) + b"hm/v1/short",  # topic length beyond the packet
        struct.pack("!H", 5) + b"hm/v1",  # QoS 1 without a packet id
        struct.pack("!H", 5) + b"hm/v1" + b"\x00\x07",  # MQTT 5 without properties length
    ],
)
def test_malformed_packets_are_protocol_errors_not_deliveries(packet: bytes) -> None:
    c, got = client(paho.MQTTv5)
    with pytest.raises(MalformedPacket):
        publish(c, 0x32, packet)
    assert got == []
