"""The channel set: builds channel objects from configuration and owns their resources
(one shared HTTP client, MQTT connections) for the notifier's lifetime."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

import httpx

from alerts.notify.config import ChannelConfig
from alerts.notify.http_channels import HttpChannel
from alerts.notify.mqtt_channel import MqttChannel
from alerts.notify.render import Message
from alerts.notify.smtp_channel import SmtpChannel

logger = logging.getLogger(__name__)


class Channel(Protocol):
    id: str

    async def send(self, msg: Message, notification_id: int) -> int:
        """Deliver; return a status code, or raise DeliveryError."""

    async def aclose(self) -> None: ...


class ChannelSet:
    """Async context manager; `get(cfg)` returns a channel, rebuilt when its config changes."""

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._channels: dict[str, tuple[ChannelConfig, Channel]] = {}

    async def __aenter__(self) -> ChannelSet:
        self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for _, ch in self._channels.values():
            await ch.aclose()
        self._channels.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, cfg: ChannelConfig) -> Channel:
        held = self._channels.get(cfg.id)
        if held is not None and held[0] == cfg:
            return held[1]
        if held is not None:
            await held[1].aclose()
        ch = self._build(cfg)
        self._channels[cfg.id] = (cfg, ch)
        return ch

    def _build(self, cfg: ChannelConfig) -> Channel:
        if cfg.type in ("webhook", "dingtalk", "wecom"):
            if self._client is None:
                raise RuntimeError("ChannelSet used outside `async with`")
            return HttpChannel(cfg, self._client)
        if cfg.type == "email":
            return SmtpChannel(cfg, timeout_s=self._timeout_s)
        return MqttChannel(cfg, timeout_s=self._timeout_s)

    async def retain_only(self, ids: set[str]) -> None:
        """Close channels no longer configured (after a reload)."""
        for cid in [c for c in self._channels if c not in ids]:
            await self._channels.pop(cid)[1].aclose()
