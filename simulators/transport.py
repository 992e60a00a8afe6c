"""The simulators' MQTT adapter: the only module that imports paho-mqtt.

Many devices share a few connections (a device always uses the same one, so its
messages keep their order). A device that goes offline gets a connection of its own with
its Last Will, which is then cut without DISCONNECT, so the broker publishes the will
exactly as it would for a real device whose link died.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from simulators.model import Message

logger = logging.getLogger(__name__)


class TransportError(Exception):
    """The broker could not be reached or refused us."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"MQTT broker {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Received:
    """A message a `Subscriber` got; our own type, not paho's."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_monotonic: float


def _client(client_id: str, username: str | None, password: str | None, tls: bool) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    return client


def _connect_blocking(
    client: mqtt.Client, host: str, port: int, keepalive_s: int, timeout_s: float
) -> None:
    """Connect and wait for CONNACK, driving the client's loop from this thread."""
    result: dict[str, Any] = {}

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        result["rc"] = rc

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive_s)
    except OSError as exc:
        raise TransportError(host, port, str(exc)) from exc
    deadline = time.monotonic() + timeout_s
    while "rc" not in result:
        if time.monotonic() > deadline:
            raise TransportError(host, port, "no CONNACK")
        if client.loop(timeout=0.05) not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
            raise TransportError(host, port, "connection lost during connect")
    if result["rc"].is_failure:
        raise TransportError(host, port, f"refused: {result['rc']}")


class MqttTransport:
    """Publishes simulator `Message`s. Use as a (sync) context manager.

    Args:
        host, port, username, password, tls: the broker.
        connections: shared connections the devices are spread over.
        client_id_prefix: client ids are `{prefix}-{i}` and `{prefix}-will-{device}`.
        max_pending: publishes not yet acknowledged before `send` blocks (backpressure).
        telemetry_qos: override the QoS of telemetry and events (0 for raw load tests;
            status messages and wills stay QoS 1).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        connections: int = 2,
        client_id_prefix: str = "healthmon-sim",
        keepalive_s: int = 60,
        max_pending: int = 20000,
        connect_timeout_s: float = 10.0,
        telemetry_qos: int | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.host, self.port = host, port
        self.username, self.password, self.tls = username, password, tls
        self.n_connections = connections
        self.client_id_prefix = client_id_prefix
        self.keepalive_s = keepalive_s
        self.max_pending = max_pending
        self.connect_timeout_s = connect_timeout_s
        self.telemetry_qos = telemetry_qos
        self._clients: list[mqtt.Client] = []
        self._cond = threading.Condition()
        self._pending = 0
        self._watch: mqtt.Client | None = None
        self._will_waits: dict[str, tuple[bytes, threading.Event]] = {}
        self._suback: dict[int, threading.Event] = {}
        self.sent = 0
        self.dropped_connections = 0

    # -- lifecycle -----------------------------------------------------------------

    def open(self) -> None:
        """Connect every shared connection; raises TransportError when one fails."""
        try:
            for i in range(self.n_connections):
                client = _client(
                    f"{self.client_id_prefix}-{i}", self.username, self.password, self.tls
                )
                client.max_inflight_messages_set(1000)
                client.max_queued_messages_set(0)
                client.reconnect_delay_set(min_delay=1, max_delay=30)
                _connect_blocking(
                    client, self.host, self.port, self.keepalive_s, self.connect_timeout_s
                )
                client.on_publish = self._on_publish
                client.on_disconnect = self._on_disconnect
                client.loop_start()
                self._clients.append(client)
        except TransportError:
            self.close(flush_timeout_s=0)
            raise

    def close(self, flush_timeout_s: float = 10.0) -> None:
        """Wait for outstanding acknowledgements (bounded), then disconnect cleanly."""
        if flush_timeout_s > 0:
            self.flush(flush_timeout_s)
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        self._clients.clear()
        if self._watch is not None:
            self._watch.disconnect()
            self._watch.loop_stop()
            self._watch = None

    def __enter__(self) -> MqttTransport:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(flush_timeout_s=0 if exc_type is not None else 10.0)

    # -- publishing ------------------------------------------------------------------

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def _on_disconnect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            logger.warning("simulator connection %s lost: %s; paho reconnects", c._client_id, rc)

    def send(self, msg: Message) -> None:
        """Publish one message, or cut the device's link for a `drop` message."""
        if msg.action == "drop":
            self.drop(msg.device_id, msg.topic, msg.payload)
            return
        with self._cond:
            while self._pending >= self.max_pending:
                self._cond.wait(1.0)
            self._pending += 1
        client = self._clients[zlib.crc32(msg.device_id.encode()) % len(self._clients)]
        qos = msg.qos
        if self.telemetry_qos is not None and not msg.topic.endswith("/status"):
            qos = self.telemetry_qos
        info = client.publish(msg.topic, msg.payload, qos=qos, retain=msg.retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not queued by paho (queue full, payload too large): no acknowledgement follows.
            with self._cond:
                self._pending -= 1
            logger.warning("publish to %s failed: %s", msg.topic, info.rc)
            return
        self.sent += 1

    def send_all(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            self.send(msg)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every publish is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def drop(self, device_id: str, will_topic: str, will_payload: bytes) -> None:
        """Connect as the device with its Last Will, then cut the TCP connection without
        DISCONNECT: the broker publishes the will (retained) as for a dead link.

        Ordered with the device's other messages: earlier publishes are acknowledged
        first, and this returns once the broker has published the will, so a later
        `{"online": true}` cannot overtake it on another connection.
        """
        self.flush(self.connect_timeout_s)
        watch = self._watcher()
        seen = threading.Event()
        with self._cond:
            self._will_waits[will_topic] = (will_payload, seen)
        subscribed = threading.Event()
        # Held across subscribe() so the SUBACK callback cannot run before we listen.
        with self._cond:
            rc, mid = watch.subscribe(will_topic, qos=1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise TransportError(self.host, self.port, f"subscribe failed: {rc}")
            self._suback[mid] = subscribed
        if not subscribed.wait(self.connect_timeout_s):
            raise TransportError(self.host, self.port, "no SUBACK for the will topic")
        client = _client(
            f"{self.client_id_prefix}-will-{device_id}", self.username, self.password, self.tls
        )
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        _connect_blocking(client, self.host, self.port, self.keepalive_s, self.connect_timeout_s)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already gone: the broker sees the same
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if not seen.wait(self.connect_timeout_s):
            logger.warning("no Last Will seen on %s", will_topic)
        watch.unsubscribe(will_topic)
        with self._cond:
            self._will_waits.pop(will_topic, None)
        self.dropped_connections += 1

    def _watcher(self) -> mqtt.Client:
        """A connection that watches will topics (made on the first drop)."""
        if self._watch is None:
            watch = _client(
                f"{self.client_id_prefix}-watch", self.username, self.password, self.tls
            )
            _connect_blocking(watch, self.host, self.port, self.keepalive_s, self.connect_timeout_s)
            watch.on_message = self._on_will
            watch.on_subscribe = self._on_suback
            watch.loop_start()
            self._watch = watch
        return self._watch

    def _on_suback(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            event = self._suback.pop(mid, None)
        if event is not None:
            event.set()

    def _on_will(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        # A live publish reaches an existing subscription with RETAIN 0 (MQTT 3.1.1
        # 3.3.1.3); the retained copy a new subscription gets first has RETAIN 1.
        with self._cond:
            wait = self._will_waits.get(m.topic)
        if wait is not None and not m.retain and m.payload == wait[0]:
            wait[1].set()


class Subscriber:
    """Collects messages on topic filters from a real broker (tests, tools).

    Use as a context manager; `wait_for(predicate, timeout_s)` waits on a condition
    instead of sleeping.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Iterable[str],
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.topics = list(topics)
        self.client_id = client_id
        self.username, self.password = username, password
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._client: mqtt.Client | None = None

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        rec = Received(m.topic, bytes(m.payload), bool(m.retain), m.qos, time.monotonic())
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    def __enter__(self) -> Subscriber:
        client = _client(self.client_id, self.username, self.password, False)
        _connect_blocking(client, self.host, self.port, 30, 10.0)
        client.on_message = self._on_message
        done = threading.Event()
        client.on_subscribe = lambda *a: done.set()
        client.loop_start()
        client.subscribe([(t, 1) for t in self.topics])
        if not done.wait(10.0):
            client.loop_stop()
            raise TransportError(self.host, self.port, "no SUBACK")
        self._client = client
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 10.0
    ) -> bool:
        """Wait until predicate(messages so far) holds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)
