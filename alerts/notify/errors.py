"""The notifier's exceptions; each carries the data a log line or the ledger needs."""

from __future__ import annotations


class NotifyError(Exception):
    """Base of every notification error."""


class ConfigError(NotifyError):
    """A configuration file or stored configuration is invalid."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


class DeliveryError(NotifyError):
    """A channel did not get an acceptance from its receiver.

    `status_code` is the HTTP status (or SMTP reply code) when there was one;
    `retryable` is False when retrying cannot help (a rejected configuration).
    """

    def __init__(
        self,
        channel_id: str,
        reason: str,
        *,
        status_code: int | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(f"channel {channel_id}: {reason}")
        self.channel_id = channel_id
        self.reason = reason
        self.status_code = status_code
        self.retryable = retryable
