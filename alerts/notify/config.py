"""Notification configuration: channels, contact groups, routes, delivery settings.

The same model is read from a YAML/JSON file (`healthmon notify load FILE`) and from the
database tables it is stored in (alerts/notify/store.py). Pure: no I/O besides reading
the file in `parse_config_file`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alerts.notify.errors import ConfigError

ChannelType = Literal["webhook", "dingtalk", "wecom", "email", "mqtt"]
# Keys a matcher may use (routes, contact groups, silences); `min_severity` is special.
MATCH_KEYS = frozenset(
    {"region", "site_id", "device_id", "domain", "rule_id", "severity", "kind", "min_severity"}
)
Matcher = dict[str, str | list[str]]


def _check_matcher(match: Matcher, where: str) -> None:
    unknown = set(match) - MATCH_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown match keys {sorted(unknown)}")
    ms = match.get("min_severity")
    if ms is not None and ms not in ("info", "warning", "critical"):
        raise ValueError(f"{where}: min_severity must be info, warning or critical")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ChannelConfig(_Model):
    """One way of reaching people: a robot webhook, a mailbox, the MQTT alert topic."""

    id: str
    type: ChannelType
    fallback: str | None = None
    enabled: bool = True
    # HTTP channels (webhook, dingtalk, wecom)
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    secret: str | None = None  # DingTalk "加签" secret (SEC...)
    msgtype: Literal["markdown", "text"] = "markdown"
    at_members: bool = False  # @ the contact group members by mobile (DingTalk, WeCom)
    # email
    host: str | None = None
    port: int | None = None
    from_addr: str | None = Field(default=None, alias="from")
    to: list[str] = Field(default_factory=list)
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    # mqtt
    topic_prefix: str = "hm/alerts/v1"
    client_id: str | None = None
    tls: bool = False

    @model_validator(mode="after")
    def _check_type_fields(self) -> ChannelConfig:
        if self.type in ("webhook", "dingtalk", "wecom") and not self.url:
            raise ValueError(f"channel {self.id}: type {self.type} needs `url`")
        if self.type == "email" and not (self.host and self.from_addr):
            raise ValueError(f"channel {self.id}: type email needs `host` and `from`")
        if self.type == "mqtt" and not self.host:
            raise ValueError(f"channel {self.id}: type mqtt needs `host`")
        return self

    def settings_json(self) -> dict[str, Any]:
        """Type-specific settings as stored in notify_channels.config."""
        return self.model_dump(
            by_alias=True, exclude={"id", "type", "fallback", "enabled"}, exclude_defaults=True
        )


class Member(_Model):
    name: str
    role: str = ""
    phone: str | None = None
    email: str | None = None


class ContactGroup(_Model):
    """People reached together, on the listed channels, for the alerts `match` covers."""

    id: str
    name: str = ""
    tier: str = ""
    match: Matcher = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list)
    members: list[Member] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ContactGroup:
        _check_matcher(self.match, f"contact group {self.id}")
        return self


class LadderStep(_Model):
    """One rung: after `after_s` unacknowledged (from the first notification), notify
    the groups named in `groups` plus the groups of `tier` that cover the alert."""

    after_s: float = Field(default=0.0, ge=0)
    tier: str | None = None
    groups: list[str] = Field(default_factory=list)


class Route(_Model):
    id: str
    match: Matcher = Field(default_factory=dict)
    ladder: list[LadderStep] = Field(min_length=1)
    reminder_every_s: float | None = Field(default=None, gt=0)
    max_reminders: int | None = Field(default=None, ge=0)
    group_wait_s: float = Field(default=30.0, ge=0)
    continue_matching: bool = Field(default=False, alias="continue")

    @model_validator(mode="after")
    def _check(self) -> Route:
        _check_matcher(self.match, f"route {self.id}")
        after = [s.after_s for s in self.ladder]
        if after != sorted(after):
            raise ValueError(f"route {self.id}: ladder after_s must not decrease")
        return self


class Delivery(_Model):
    """Retry policy and failure thresholds."""

    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: float = Field(default=5.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    channel_failing_after: int = Field(default=3, ge=1)  # consecutive failed attempts
    notify_acknowledged: bool = True
    notify_resolved: bool = True
    broadcast: list[str] = Field(default_factory=list)  # channels fed every state change


class NotifyConfig(_Model):
    channels: list[ChannelConfig] = Field(default_factory=list)
    contact_groups: list[ContactGroup] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    delivery: Delivery = Field(default_factory=Delivery)

    @model_validator(mode="after")
    def _check_references(self) -> NotifyConfig:
        channel_ids = [c.id for c in self.channels]
        group_ids = [g.id for g in self.contact_groups]
        for kind, ids in (("channel", channel_ids), ("contact group", group_ids)):
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise ValueError(f"duplicate {kind} ids: {sorted(dup)}")
        known_c, known_g = set(channel_ids), set(group_ids)
        for c in self.channels:
            if c.fallback is not None and c.fallback not in known_c:
                raise ValueError(f"channel {c.id}: unknown fallback {c.fallback}")
        for g in self.contact_groups:
            missing = set(g.channels) - known_c
            if missing:
                raise ValueError(f"contact group {g.id}: unknown channels {sorted(missing)}")
        for r in self.routes:
            for s in r.ladder:
                missing = set(s.groups) - known_g
                if missing:
                    raise ValueError(f"route {r.id}: unknown contact groups {sorted(missing)}")
        missing = set(self.delivery.broadcast) - known_c
        if missing:
            raise ValueError(f"delivery.broadcast: unknown channels {sorted(missing)}")
        return self

    def channel(self, channel_id: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    def group(self, group_id: str) -> ContactGroup | None:
        return next((g for g in self.contact_groups if g.id == group_id), None)

    def route(self, route_id: str) -> Route | None:
        return next((r for r in self.routes if r.id == route_id), None)


def parse_config(data: object, *, source: str = "config") -> NotifyConfig:
    """Validate already-parsed YAML/JSON data; raises ConfigError with every problem."""
    try:
        return NotifyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, str(exc)) from exc


def parse_config_file(path: Path) -> NotifyConfig:
    """Read a `.json`, `.yaml` or `.yml` file."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            str(path), f"not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    return parse_config(data or {}, source=str(path))
