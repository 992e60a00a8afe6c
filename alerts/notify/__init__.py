"""Notifications: channels, routing, delivery ledger, reminders, escalation, silences."""

from alerts.notify.config import (
    ChannelConfig,
    ContactGroup,
    Delivery,
    LadderStep,
    Member,
    NotifyConfig,
    Route,
    parse_config,
    parse_config_file,
)
from alerts.notify.config_store import load_config, save_config
from alerts.notify.context import NotifyStats, RunReport
from alerts.notify.decide import Backoff
from alerts.notify.errors import ConfigError, DeliveryError, NotifyError
from alerts.notify.service import Notifier

__all__ = [
    "Backoff",
    "ChannelConfig",
    "ConfigError",
    "ContactGroup",
    "Delivery",
    "DeliveryError",
    "LadderStep",
    "Member",
    "Notifier",
    "NotifyConfig",
    "NotifyError",
    "NotifyStats",
    "Route",
    "RunReport",
    "load_config",
    "parse_config",
    "parse_config_file",
    "save_config",
]
