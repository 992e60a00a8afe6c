"""The contract's MQTT alert topic (`hm/alerts/v1/{domain}/{device_id}`, QoS 1).

The only notify module importing paho-mqtt; paho's errors become DeliveryError here.
A message counts as accepted when the broker's PUBACK arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from alerts.notify.config import ChannelConfig
from alerts.notify.errors import DeliveryError
from alerts.notify.render import Message, mqtt_topic

logger = logging.getLogger(__name__)


class MqttChannel:
    """Publishes each alert of a message as the contract's alert object.

    Connects on first use and lets paho reconnect in its network thread; a publish
    while disconnected fails (and is retried by the ledger) rather than waiting.
    """

    def __init__(self, cfg: ChannelConfig, *, timeout_s: float) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self._timeout_s = timeout_s
        self._client: paho.Client | None = None
        self._connected: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}

    # paho callbacks run in paho's network thread: hand everything to the event loop.
    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if self._loop is not None and self._connected is not None and not rc.is_failure:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        logger.info("mqtt channel %s disconnected: %s", self.id, rc)
        if self._loop is not None and self._connected is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._resolve, mid, rc)

    def _resolve(self, mid: int, rc: ReasonCode) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return
        if rc.is_failure:
            fut.set_exception(DeliveryError(self.id, f"PUBACK {rc}"))
        else:
            fut.set_result(None)

    async def _ensure_connected(self) -> paho.Client:
        if self._client is None:
            cfg = self.cfg
            self._loop = asyncio.get_running_loop()
            self._connected = asyncio.Event()
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id or f"healthmon-notify-{uuid.uuid4().hex[:8]}",
                protocol=paho.MQTTv5,
            )
            if cfg.username:
                client.username_pw_set(cfg.username, cfg.password)
            if cfg.tls:
                client.tls_set_context(ssl.create_default_context())
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.reconnect_delay_set(min_delay=1, max_delay=30)
            assert cfg.host is not None  # checked by ChannelConfig
            client.connect_async(cfg.host, cfg.port or (8883 if cfg.tls else 1883), keepalive=30)
            client.loop_start()
            self._client = client
        assert self._connected is not None
        try:
            await asyncio.wait_for(self._connected.wait(), self._timeout_s)
        except TimeoutError as exc:
            raise DeliveryError(
                self.id, f"broker {self.cfg.host}:{self.cfg.port} not connected"
            ) from exc
        return self._client

    async def send(self, msg: Message, notification_id: int) -> int:
        client = await self._ensure_connected()
        assert self._loop is not None
        futs: list[asyncio.Future[None]] = []
        for alert in msg.alerts:
            payload = json.dumps(alert, ensure_ascii=False).encode()
            fut: asyncio.Future[None] = self._loop.create_future()
            info = client.publish(mqtt_topic(alert, self.cfg.topic_prefix), payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise DeliveryError(self.id, f"publish failed: {paho.error_string(info.rc)}")
            # on_publish may already have fired for this mid before we registered.
            self._pending[info.mid] = fut
            if info.is_published():
                self._pending.pop(info.mid, None)
                fut.set_result(None)
            futs.append(fut)
        try:
            await asyncio.wait_for(asyncio.gather(*futs), self._timeout_s)
        except TimeoutError as exc:
            raise DeliveryError(self.id, "no PUBACK in time") from exc
        return 0

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
