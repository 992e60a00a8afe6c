"""The broker adapter: the only module that imports the MQTT library.

paho-mqtt runs its network loop in its own thread; each message is handed to the
asyncio side as our own `RawMessage` through a bounded queue. When the queue is
full, paho's thread blocks, it stops reading the socket, and QoS 1 messages wait
at the broker unacknowledged: explicit backpressure, nothing dropped. Messages are
acknowledged (manual PUBACK) only when the writer says their rows are committed.

A PUBACK must only go back on the connection the message arrived on: every
message carries the connection's generation, and an acknowledgement for an older
generation is skipped (the broker redelivers; the database deduplicates).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.model import RawMessage

logger = logging.getLogger(__name__)

SUBSCRIPTION = "hm/v1/+/+/+"
# The broker keeps a persistent session this long after we disconnect (seconds).
SESSION_EXPIRY_S = 7 * 24 * 3600


class BrokerError(RuntimeError):
    """The broker refused us or could not be reached."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message and what is needed to acknowledge it."""

    message: RawMessage
    generation: int


@dataclass(slots=True)
class MqttStats:
    received: int = 0
    acked: int = 0
    stale_acks_skipped: int = 0
    connects: int = 0
    disconnects: int = 0
    sessions_resumed: int = 0  # reconnects where the broker still had our session


class MqttIntake:
    """Subscribe to the contract's topics at QoS 1 on a persistent session.

    Use as an async context manager; `get()` returns the next delivery, `ack()`
    acknowledges one after commit.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        share_group: str | None = None,
        queue_max: int = 20000,
        keepalive_s: int = 30,
        receive_maximum: int = 1000,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        session_expiry_s: int = SESSION_EXPIRY_S,
        protocol: str = "5",
    ) -> None:
        self._host, self._port = host, port
        self._client_id = client_id
        self._username, self._password = username, password
        self._tls = tls
        self._topic = f"$share/{share_group}/{SUBSCRIPTION}" if share_group else SUBSCRIPTION
        self._queue_max = queue_max
        self._keepalive_s = keepalive_s
        self._receive_maximum = receive_maximum
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._connect_timeout_s = connect_timeout_s
        self._session_expiry_s = session_expiry_s
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"MQTT protocol must be '5' or '3.1.1', got {protocol!r}")
        self._v5 = protocol == "5"
        self.stats = MqttStats()
        self._generation = 0
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Delivery] | None = None
        self._refusal: str | None = None
        self._session_present = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def __aenter__(self) -> MqttIntake:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self._queue_max)
        if self._v5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._client_id,
                protocol=paho.MQTTv5,
                manual_ack=True,
            )
        else:  # MQTT 3.1.1 brokers (the embedded one): a persistent session via clean_session
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(int(max(1, self._reconnect[0])), int(self._reconnect[1]))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self._session_expiry_s
                props.ReceiveMaximum = self._receive_maximum
                client.connect(
                    self._host,
                    self._port,
                    keepalive=self._keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            else:
                client.connect(self._host, self._port, keepalive=self._keepalive_s)
        except OSError as exc:
            raise BrokerError(
                f"cannot reach the broker at {self._host}:{self._port}: {exc}"
            ) from exc
        client.loop_start()
        ok = await asyncio.to_thread(self._connected.wait, self._connect_timeout_s)
        if not ok:
            client.loop_stop()
            raise BrokerError(
                f"the broker at {self._host}:{self._port} did not accept us within "
                f"{self._connect_timeout_s:g} s ({self._refusal or 'no CONNACK'})"
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._client is not None:
            # A clean DISCONNECT keeps the persistent session: unacked messages stay
            # at the broker for the next start.
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    # --- paho thread -------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _ud: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            logger.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        self.stats.connects += 1
        if flags.session_present:
            self.stats.sessions_resumed += 1
        # Re-subscribe on every (re)connect; harmless when the session already has it.
        # `connected` is set on the SUBACK: until then, a message published by a device
        # for a brand-new session would not be routed to us.
        self._session_present = bool(flags.session_present)
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(
        self, _c: paho.Client, _ud: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            self._refusal = f"subscription refused: {failed[0]}"
            logger.error("broker refused the subscription to %s: %s", self._topic, failed[0])
            return
        logger.info(
            "connected to %s:%s (session present: %s), subscribed to %s",
            self._host,
            self._port,
            self._session_present,
            self._topic,
        )
        self._connected.set()

    def _on_disconnect(
        self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._connected.clear()
        self.stats.disconnects += 1
        if not self._closing.is_set():
            # paho's network thread reconnects with capped exponential backoff
            # (reconnect_min_s doubling up to reconnect_max_s) on the same persistent
            # session; `_on_connect` re-subscribes and bumps the ack generation.
            logger.warning("disconnected from the broker (%s); paho reconnects", reason)

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        raw = RawMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            received_at=datetime.now(UTC),
            mid=msg.mid,
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
        )
        delivery = Delivery(raw, self._generation)
        assert self._loop is not None and self._queue is not None
        fut = asyncio.run_coroutine_threadsafe(self._queue.put(delivery), self._loop)
        # Blocks this thread while the queue is full: backpressure to the broker.
        while not self._closing.is_set():
            try:
                fut.result(timeout=0.5)
                self.stats.received += 1
                return
            except TimeoutError:
                continue
        fut.cancel()

    # --- asyncio side --------------------------------------------------------------

    async def get(self) -> Delivery:
        assert self._queue is not None
        return await self._queue.get()

    def pause(self) -> None:
        """Stop taking messages from the broker (they stay there, unacknowledged)."""
        self._closing.set()

    def get_nowait(self) -> Delivery | None:
        assert self._queue is not None
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a committed message (QoS 1); skipped after a reconnect."""
        if delivery.message.qos == 0:
            return
        if delivery.generation != self._generation or self._client is None:
            self.stats.stale_acks_skipped += 1
            return
        self._client.ack(delivery.message.mid, delivery.message.qos)
        self.stats.acked += 1
