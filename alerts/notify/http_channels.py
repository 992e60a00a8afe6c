"""HTTP channels: a generic JSON webhook, the DingTalk and WeCom group robots.

"Accepted" means the receiver answered 2xx and, for the robots, `{"errcode": 0}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from alerts.notify.config import ChannelConfig
from alerts.notify.errors import DeliveryError
from alerts.notify.render import Message, dingtalk_body, dingtalk_sign, webhook_body, wecom_body

logger = logging.getLogger(__name__)

# HTTP statuses worth retrying; any other 4xx means the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 425, 429})
# Robot errcodes that retrying cannot fix: a bad token or key, the robot's security
# settings (signature, keyword, IP list) rejecting us. Others (rate limits) are retried.
_FATAL_ERRCODES = frozenset({300001, 310000, 93000, 40008})


class HttpChannel:
    """One HTTP channel; `send` returns the HTTP status or raises DeliveryError."""

    def __init__(
        self,
        cfg: ChannelConfig,
        client: httpx.AsyncClient,
        *,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self._client = client
        # DingTalk checks the signature's timestamp against its own clock (within an
        # hour), so signing uses the real wall clock, never the scheduler's `now`.
        self._clock_s = clock_s

    def _request(self, msg: Message, notification_id: int) -> tuple[str, dict[str, Any]]:
        cfg = self.cfg
        assert cfg.url is not None  # checked by ChannelConfig
        if cfg.type == "webhook":
            return cfg.url, webhook_body(msg, notification_id)
        if cfg.type == "wecom":
            return cfg.url, wecom_body(msg, msgtype=cfg.msgtype, at_members=cfg.at_members)
        url = cfg.url
        if cfg.secret:
            ts = int(self._clock_s() * 1000)
            sep = "&" if "?" in url else "?"
            # The sign is already URL-encoded, as DingTalk documents; append it verbatim.
            url = f"{url}{sep}timestamp={ts}&sign={dingtalk_sign(cfg.secret, ts)}"
        return url, dingtalk_body(msg, msgtype=cfg.msgtype, at_members=cfg.at_members)

    async def send(self, msg: Message, notification_id: int) -> int:
        url, body = self._request(msg, notification_id)
        headers = {"X-Healthmon-Notification": str(notification_id), **self.cfg.headers}
        try:
            resp = await self._client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(self.id, f"{type(exc).__name__}: {exc}") from exc
        code = resp.status_code
        if not 200 <= code < 300:
            raise DeliveryError(
                self.id,
                f"HTTP {code}: {resp.text[:200]}",
                status_code=code,
                retryable=code >= 500 or code in _RETRYABLE_4XX,
            )
        if self.cfg.type in ("dingtalk", "wecom"):
            try:
                answer = resp.json()
            except ValueError as exc:
                raise DeliveryError(
                    self.id, f"not JSON: {resp.text[:200]}", status_code=code
                ) from exc
            errcode = answer.get("errcode") if isinstance(answer, dict) else None
            if errcode != 0:
                errmsg = answer.get("errmsg") if isinstance(answer, dict) else answer
                raise DeliveryError(
                    self.id,
                    f"errcode {errcode}: {errmsg}",
                    status_code=code,
                    retryable=errcode not in _FATAL_ERRCODES,
                )
        return code

    async def aclose(self) -> None:
        """The shared HTTP client belongs to the ChannelSet."""
