"""The broker adapter: the only module that imports the MQTT library.

paho-mqtt runs inside our asyncio event loop (its external-loop API: the loop watches
the socket and calls `loop_read` / `loop_write`, a task calls `loop_misc` for the
keepalive), not in a thread of its own. A received message is appended to a local
queue by the same thread that parses and writes it: no lock, no cross-thread hand-off
per message (the profile of the threaded version spent a third of the intake's CPU
handing messages from paho's thread to the loop). Only the blocking TCP/TLS connect
runs in an executor thread.

Backpressure: when the queue holds `queue_max` messages we stop reading the socket;
QoS 1 messages then wait at the broker, unacknowledged. Messages are acknowledged
(manual PUBACK) only when the writer says their rows are committed.

A PUBACK must only go back on the connection the message arrived on: every message
carries the connection's generation, which changes on every disconnect and connect,
and an acknowledgement for another generation is skipped (the broker redelivers; the
database deduplicates).

Why not aiomqtt: it does not expose manual acknowledgement (needed to acknowledge
after COMMIT), and it hands every message through an asyncio queue and a task; this
adapter is the part of aiomqtt we need (the socket callbacks), plus manual acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.backoff import Backoff
from ingest.model import RawMessage

logger = logging.getLogger(__name__)

SUBSCRIPTION = "hm/v1/+/+/+"
# The broker keeps a persistent session this long after we disconnect (seconds).
SESSION_EXPIRY_S = 7 * 24 * 3600
# Packets read per readable event before the loop gets a turn for other work.
READ_BURST = 256
MISC_INTERVAL_S = 1.0
RECV_CHUNK = 256 * 1024


Deliver = Callable[[str, bytes, int, int, bool, bool], None]  # topic payload mid qos retain dup


class _Client(paho.Client):
    """paho's client with shortcuts on the receive path, each measured (see
    benchmarks/results/ingest.md):

    - the socket is read in large chunks and paho's small reads (1 byte for the packet
      type, 1 per length byte, then the rest) are served from them: one recv() per burst
      of packets instead of three per packet;
    - a QoS 0/1 PUBLISH without MQTT 5 properties (what devices send) is decoded here
      and handed to `deliver` directly: paho builds an MQTT 5 `Properties` object, a
      message object with a threading.Condition, and looks up topic-specific callbacks
      for every message, which together were 40 % of paho's receive cost. Anything else
      (QoS 2, properties present) takes paho's own path to `on_message`.
    """

    def __init__(self, *args: Any, deliver: Deliver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliver = deliver
        self._rbuf = b""
        self._rpos = 0

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        pos = 2 + ((packet[0] << 8) | packet[1])
        if pos > len(packet):
            return super()._handle_publish()  # malformed: paho reports it
        topic = packet[2:pos]
        mid = 0
        if qos:
            if len(packet) < pos + 2:
                return super()._handle_publish()  # malformed: paho reports it
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if self._protocol == paho.MQTTv5:
            if len(packet) <= pos or packet[pos] != 0:
                return super()._handle_publish()  # has properties (or is malformed)
            pos += 1
        elif not topic:
            return super()._handle_publish()  # MQTT 3: an empty topic is malformed
        self._deliver(
            topic.decode("utf-8", "replace"),  # a bad topic is rejected as bad_topic
            bytes(memoryview(packet)[pos:]),
            mid,
            qos,
            bool(header & 0x01),
            bool(header & 0x08),
        )
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet (epoll cannot see
        them), including what TLS has decrypted."""
        sock = self._sock
        pending = getattr(sock, "pending", None)
        return len(self._rbuf) - self._rpos + (pending() if pending is not None else 0)

    def _sock_recv(self, bufsize: int) -> bytes:
        pos, buf = self._rpos, self._rbuf
        if pos >= len(buf):
            buf = super()._sock_recv(RECV_CHUNK)  # BlockingIOError when there is nothing
            if not buf:
                return buf  # the broker closed the connection
            self._rbuf, pos = buf, 0
        self._rpos = pos + bufsize
        return buf[pos : pos + bufsize]

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")  # rejected as bad_topic
        self._deliver(
            topic,
            bytes(message.payload),
            message.mid,
            message.qos,
            bool(message.retain),
            bool(message.dup),
        )


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
    reconnect_failures: int = 0
    read_pauses: int = 0  # times the queue was full and we stopped reading the socket


class MqttIntake:
    """Subscribe to the contract's topics at QoS 1 on a persistent session.

    Use as an async context manager; `get()` / `get_within()` / `get_nowait()` return
    the next delivery, `ack()` acknowledges one after commit.
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
        ca_file: str | None = None,
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
        self._tls, self._ca_file = tls, ca_file
        self._topic = f"$share/{share_group}/{SUBSCRIPTION}" if share_group else SUBSCRIPTION
        self._queue_max = max(1, queue_max)
        self._keepalive_s = keepalive_s
        self._receive_maximum = receive_maximum
        self._backoff = Backoff(base_s=reconnect_min_s, cap_s=max(reconnect_min_s, reconnect_max_s))
        self._connect_timeout_s = connect_timeout_s
        self._session_expiry_s = session_expiry_s
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"MQTT protocol must be '5' or '3.1.1', got {protocol!r}")
        self._v5 = protocol == "5"
        self.stats = MqttStats()
        self._generation = 0
        self._ready = False  # subscribed on the current connection
        self._closing = False
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._queue: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fd: int | None = None  # the socket the loop watches
        self._sock: Any = None
        self._reading = False
        self._paused = False
        self._reconnecting = False
        self._lost = asyncio.Event()
        self._settled = asyncio.Event()  # first connection: subscribed, or refused
        self._refusal: str | None = None
        self._session_present = False
        self._reconnect_attempt = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self._ready

    def queue_depth(self) -> int:
        return len(self._queue)

    async def __aenter__(self) -> MqttIntake:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # MQTT 3.1.1 brokers (the embedded one): a persistent session via clean_session.
        session: dict[str, Any] = (
            {"protocol": paho.MQTTv5}
            if self._v5
            else {"protocol": paho.MQTTv311, "clean_session": False}
        )
        client = _Client(
            CallbackAPIVersion.VERSION2,
            deliver=self._on_publish,
            client_id=self._client_id,
            manual_ack=True,
            **session,
        )
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set(ca_certs=self._ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.connect_timeout = self._connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        try:
            await self._loop.run_in_executor(None, self._connect_first, client)
        except OSError as exc:
            raise BrokerError(
                f"cannot reach the broker at {self._host}:{self._port}: {exc}"
            ) from exc
        self._tasks = [
            asyncio.create_task(self._misc_loop(), name="mqtt.keepalive"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), self._connect_timeout_s)
        if not self._ready:
            await self._shutdown()
            raise BrokerError(
                f"the broker at {self._host}:{self._port} did not accept us within "
                f"{self._connect_timeout_s:g} s ({self._refusal or 'no CONNACK'})"
            )
        self._tasks.append(asyncio.create_task(self._reconnect_loop(), name="mqtt.reconnect"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        client = self._client
        if client is None:
            return
        # A clean DISCONNECT keeps the persistent session: unacked messages stay at the
        # broker for the next start. Flush what is queued (acks, then the DISCONNECT).
        if client.socket() is not None:
            client.disconnect()
            for _ in range(100):
                if client.socket() is None or not client.want_write():
                    break
                client.loop_write()
                if client.socket() is None or not client.want_write():
                    break
                await asyncio.sleep(0.01)
        self._stop_watching()
        with contextlib.suppress(OSError):
            client._sock_close()  # paho has no public "close now"
        self._ready = False

    def _connect_first(self, client: paho.Client) -> None:
        """Blocking TCP (+TLS) connect and CONNECT; runs in an executor thread."""
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

    # --- socket callbacks (paho calls them; marshalled onto the loop thread) ----------

    def _in_loop(self, fn: Callable[..., object], *args: object) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._in_loop(self._watch, sock)

    def _on_socket_close(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._in_loop(self._unwatch, sock)

    def _on_socket_register_write(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._in_loop(self._want_write, sock, True)

    def _on_socket_unregister_write(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._in_loop(self._want_write, sock, False)

    def _watch(self, sock: Any) -> None:
        self._stop_watching()
        self._sock, self._fd = sock, sock.fileno()
        self._paused = False
        self._resume_reading()

    def _unwatch(self, sock: Any) -> None:
        if sock is self._sock:
            self._stop_watching()

    def _stop_watching(self) -> None:
        assert self._loop is not None
        if self._fd is not None:
            with contextlib.suppress(ValueError, KeyError, OSError):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(ValueError, KeyError, OSError):
                self._loop.remove_writer(self._fd)
        self._sock, self._fd, self._reading = None, None, False

    def _want_write(self, sock: Any, on: bool) -> None:
        assert self._loop is not None
        if sock is not self._sock or self._fd is None:
            return
        if on:
            self._loop.add_writer(self._fd, self._writable)
        else:
            with contextlib.suppress(ValueError, KeyError, OSError):
                self._loop.remove_writer(self._fd)

    def _resume_reading(self) -> None:
        if self._fd is not None and not self._reading and len(self._queue) < self._queue_max:
            assert self._loop is not None
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True
            self._read_buffered()

    def _stop_reading(self) -> None:
        if self._reading and self._fd is not None:
            assert self._loop is not None
            with contextlib.suppress(ValueError, KeyError, OSError):
                self._loop.remove_reader(self._fd)
        self._reading = False

    def _readable(self) -> None:
        """The socket has data: read packets until it has none (or the queue is full)."""
        client = self._client
        assert isinstance(client, _Client)
        try:
            for _ in range(READ_BURST):
                before = self.stats.received
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not self._reading:
                    return
                if self.stats.received == before:  # nothing new (or not a PUBLISH)
                    break
        except Exception:  # a bug in the library must not kill the loop: drop the connection
            logger.exception("reading from the broker failed; reconnecting")
            self._drop_connection("read error")
            return
        self._read_buffered()

    def _read_buffered(self) -> None:
        """Bytes already read off the socket wait in user space, where epoll does not see
        them: come back for them on the next turn of the loop."""
        client = self._client
        if self._reading and isinstance(client, _Client) and client.buffered() > 0:
            assert self._loop is not None
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        client = self._client
        assert client is not None
        try:
            client.loop_write()
        except Exception:
            logger.exception("writing to the broker failed; reconnecting")
            self._drop_connection("write error")

    def _drop_connection(self, why: str) -> None:
        assert self._client is not None
        self._stop_watching()
        with contextlib.suppress(OSError):
            self._client._sock_close()
        self._mark_lost(why)

    # --- protocol callbacks (always on the loop thread) --------------------------------

    def _on_connect(
        self, client: paho.Client, _ud: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            logger.error("broker refused the connection: %s", reason)
            self._settled.set()
            return
        self._generation += 1
        self.stats.connects += 1
        self._reconnect_attempt = 0
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
            self._settled.set()
            return
        logger.info(
            "connected to %s:%s (session present: %s), subscribed to %s",
            self._host,
            self._port,
            self._session_present,
            self._topic,
        )
        self._ready = True
        self._settled.set()

    def _on_disconnect(
        self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._in_loop(self._mark_lost, str(reason))

    def _mark_lost(self, why: str) -> None:
        self.stats.disconnects += 1
        self._ready = False
        self._generation += 1  # acks of messages from the lost connection are skipped
        if not self._closing:
            logger.warning("disconnected from the broker (%s); reconnecting", why)
            self._lost.set()

    def _on_publish(
        self, topic: str, payload: bytes, mid: int, qos: int, retain: bool, dup: bool
    ) -> None:
        if self._paused:
            return  # not acknowledged: the broker delivers it again (see `pause`)
        self._queue.append(
            Delivery(
                RawMessage(topic, payload, datetime.now(UTC), mid, qos, retain, dup),
                self._generation,
            )
        )
        self.stats.received += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._queue) >= self._queue_max and self._reading:
            # Full: stop reading; the broker holds the rest (unacknowledged) for us.
            self.stats.read_pauses += 1
            self._stop_reading()

    # --- tasks ------------------------------------------------------------------------

    async def _misc_loop(self) -> None:
        """paho's keepalive bookkeeping (PINGREQ, dead-connection detection)."""
        assert self._client is not None
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            if self._fd is not None and not self._reconnecting:
                try:
                    self._client.loop_misc()
                except Exception:
                    logger.exception("MQTT keepalive check failed; reconnecting")
                    self._drop_connection("keepalive error")

    async def _reconnect_loop(self) -> None:
        """After a lost connection: reconnect with capped exponential backoff and jitter,
        on the same persistent session (`_on_connect` re-subscribes)."""
        assert self._client is not None and self._loop is not None
        while not self._closing:
            await self._lost.wait()
            delay = self._backoff.delay(self._reconnect_attempt)
            self._reconnect_attempt += 1
            await asyncio.sleep(delay)
            self._lost.clear()
            self._reconnecting = True
            try:
                await self._loop.run_in_executor(None, self._client.reconnect)
            except (OSError, ValueError) as exc:
                self.stats.reconnect_failures += 1
                logger.warning(
                    "reconnect to %s:%s failed: %s", self._host, self._port, exc or type(exc)
                )
                self._lost.set()
            finally:
                self._reconnecting = False

    # --- asyncio side ------------------------------------------------------------------

    def _take(self) -> Delivery:
        d = self._queue.popleft()
        if not self._reading and len(self._queue) <= self._queue_max // 2:
            self._resume_reading()
        return d

    async def get(self) -> Delivery:
        while not self._queue:
            await self._wait(None)
        return self._take()

    async def get_within(self, timeout_s: float) -> Delivery | None:
        """The next delivery, or None when none arrives within `timeout_s`."""
        if not self._queue:
            await self._wait(timeout_s)
            if not self._queue:
                return None
        return self._take()

    def get_nowait(self) -> Delivery | None:
        return self._take() if self._queue else None

    async def _wait(self, timeout_s: float | None) -> None:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut
        timer = None
        if timeout_s is not None:
            timer = self._loop.call_later(timeout_s, _settle, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def pause(self) -> None:
        """Stop taking messages on this connection: what arrives from now on is left
        unacknowledged, so the broker redelivers it on the next connection (which takes
        messages again). The socket is still read, so a lost connection is noticed."""
        self._paused = True

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a committed message (QoS 1); skipped after a reconnect."""
        if delivery.message.qos == 0:
            return
        if delivery.generation != self._generation or self._client is None:
            self.stats.stale_acks_skipped += 1
            return
        self._client.ack(delivery.message.mid, delivery.message.qos)
        self.stats.acked += 1


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
