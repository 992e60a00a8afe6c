"""Request and response bodies of the HTTP API (the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

Domain = Literal["coldchain", "air", "water", "pool", "wastewater", "waste"]
Severity = Literal["info", "warning", "critical"]
AlertState = Literal["firing", "acknowledged", "resolved"]
RoleName = Literal["admin", "operator", "viewer"]

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SiteId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Region = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
ShortText = Annotated[str, StringConstraints(max_length=200)]

T = TypeVar("T")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    """A page of a list; pass `next_cursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None = None


# --- sites and devices --------------------------------------------------------------------


class Site(BaseModel):
    site_id: str
    name: str
    kind: str
    region: str
    address: str
    created_at: datetime
    updated_at: datetime


class SiteCreate(_In):
    site_id: SiteId
    name: ShortText = ""
    kind: Annotated[str, StringConstraints(max_length=40)] = Field(
        default="", description="hospital, clinic, water_plant, pool, public_place, ..."
    )
    region: Region
    address: ShortText = ""


class SitePatch(_In):
    name: ShortText | None = None
    kind: Annotated[str, StringConstraints(max_length=40)] | None = None
    region: Region | None = None
    address: ShortText | None = None


class Device(BaseModel):
    device_id: str
    domain: str
    site_id: str | None
    region: str | None = Field(description="the site's region; null for a device with no site")
    profile: str
    expected_interval_s: int
    name: str
    enabled: bool
    auto_registered: bool
    online: bool | None
    status_changed_at: datetime | None
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime


class DeviceCreate(_In):
    device_id: DeviceId
    domain: Domain
    site_id: SiteId | None = None
    profile: Annotated[str, StringConstraints(max_length=64)] = ""
    expected_interval_s: int = Field(default=60, ge=1, le=7 * 86400)
    name: ShortText = ""
    enabled: bool = True


class DevicePatch(_In):
    site_id: SiteId | None = None
    profile: Annotated[str, StringConstraints(max_length=64)] | None = None
    expected_interval_s: int | None = Field(default=None, ge=1, le=7 * 86400)
    name: ShortText | None = None
    enabled: bool | None = None


class MqttCredentials(BaseModel):
    """Shown once, at creation; only a PBKDF2-SHA512 hash is kept."""

    username: str
    password: str
    topic_prefix: str


class DeviceCreated(Device):
    mqtt: MqttCredentials


class LimitsOut(BaseModel):
    low: float | None
    high: float | None
    rule_ids: list[str]

    @classmethod
    def of(cls, limits: Any) -> LimitsOut | None:
        """From api.history.Limits (or None)."""
        if limits is None:
            return None
        return cls(low=limits.low, high=limits.high, rule_ids=list(limits.rule_ids))


class LatestValue(BaseModel):
    metric: str
    ts: datetime = Field(description="event time of the newest reading")
    value: float | None
    received_at: datetime
    unit: str | None = None
    limits: LimitsOut | None = Field(
        default=None,
        description="the band the device's enabled threshold rules allow for this metric"
        " (as on GET /readings); null when no rule bounds it",
    )


class DeviceLatest(BaseModel):
    device_id: str
    domain: str
    online: bool | None
    last_seen: datetime | None
    status_changed_at: datetime | None
    metrics: list[LatestValue]


# --- readings -----------------------------------------------------------------------------


class ReadingPoint(BaseModel):
    """A raw reading (bucket null) or one bucket of a downsampled series."""

    ts: datetime = Field(description="event time, or the bucket's start")
    metric: str
    value: float | None = Field(description="null: sensor error (raw) or no data (bucket)")
    seq: int | None = None
    received_at: datetime | None = None
    ts_estimated: bool | None = None
    count: int | None = Field(default=None, description="bucket: non-null values")
    samples: int | None = Field(default=None, description="bucket: all samples incl. errors")
    in_range_count: int | None = None
    in_range_s: float | None = Field(
        default=None, description="bucket: seconds within the rule limits (see docs/api.md)"
    )


class ReadingsPage(BaseModel):
    device_id: str
    metric: str | None
    start: datetime
    end: datetime
    bucket: str | None = None
    agg: str | None = None
    unit: str | None = None
    limits: LimitsOut | None = None
    items: list[ReadingPoint]
    next_cursor: str | None = None


# --- alerts -------------------------------------------------------------------------------


class Alert(BaseModel):
    """The contract's alert object, with a few extra fields (docs/api.md)."""

    id: str
    rule_id: str
    device_id: str | None
    site_id: str | None
    region: str | None
    domain: str | None
    metric: str | None
    severity: str
    state: str
    started_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    value: float | None
    threshold: float | None
    message: str
    kind: str | None = None
    detected_at: datetime | None = None
    ack_note: str | None = None
    standard: str | None = None
    retrospective: bool | None = None
    subject: str | None = None
    resolved_by: str | None = None
    suppressed_by: str | None = None


class AlertEvent(BaseModel):
    id: int
    at: datetime
    kind: str
    state: str | None
    actor: str | None
    note: str | None
    data: dict[str, Any]


class AlertDetail(Alert):
    timeline: list[AlertEvent]


class AckRequest(_In):
    note: Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]


# --- rules, silences, rejected ------------------------------------------------------------


class Rule(BaseModel):
    rule_id: str
    body: dict[str, Any]
    region: str | None
    enabled: bool
    builtin: bool
    version: int
    created_at: datetime
    updated_at: datetime


class RuleCreate(_In):
    rule_id: RuleId
    body: dict[str, Any] = Field(description="the alert engine's rule model (alerts/rules.py)")
    region: Region | None = None
    enabled: bool = True


class RuleReplace(_In):
    body: dict[str, Any]
    region: Region | None = None
    enabled: bool = True


class SilenceMatchers(_In):
    region: Region | None = None
    site_id: SiteId | None = None
    device_id: DeviceId | None = None
    domain: Domain | None = None
    rule_id: RuleId | None = None


class Silence(BaseModel):
    id: str
    matchers: dict[str, Any]
    starts_at: datetime
    ends_at: datetime
    owner: str
    reason: str
    created_at: datetime


class SilenceCreate(_In):
    matchers: SilenceMatchers
    starts_at: AwareDatetime | None = Field(default=None, description="default: now")
    ends_at: AwareDatetime
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Rejected(BaseModel):
    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    metric: str | None
    value: float | None
    ts: datetime | None
    payload: str = Field(description="the stored head of the payload, UTF-8 with replacement")
    payload_size: int


# --- auth and ops -------------------------------------------------------------------------


class LoginRequest(_In):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Me(BaseModel):
    username: str
    kind: Literal["key", "user"]
    role: RoleName
    regions: list[str]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
