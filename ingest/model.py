"""The data that flows from intake to the writer and the alert engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Machine-readable reasons for a rejected message (contract section 2, extended)."""

    BAD_TOPIC = "bad_topic"  # topic not hm/v1/{domain}/{device_id}/{channel}
    BAD_ENCODING = "bad_encoding"  # payload is not UTF-8
    BAD_JSON = "bad_json"  # not JSON (NaN/Infinity literals included), or nested too deep
    SCHEMA = "schema"  # JSON of the wrong shape
    TOO_LARGE = "too_large"  # payload over 256 KiB, or a batch over 1000 samples
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DISABLED = "device_disabled"
    DOMAIN_MISMATCH = "domain_mismatch"  # topic domain is not the registered one
    UNKNOWN_METRIC = "unknown_metric"
    UNKNOWN_EVENT = "unknown_event"
    OUT_OF_PHYSICAL_RANGE = "out_of_physical_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"  # older than the retention horizon: it would be dropped at once
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as the broker delivered it; our own type, not the MQTT library's."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored value. `value` None means the sensor reported an error."""

    ts: datetime
    device_id: str
    metric: str
    value: float | None
    seq: int | None = None
    received_at: datetime | None = None
    ts_estimated: bool = False  # no `ts` in the payload: receive time used
    # ts_estimated, with a `seq`, in a message the broker marked as a redelivery (DUP):
    # stored only if the device has no estimated-time reading of that seq and metric in
    # the day before (a redelivery's receive time differs from the first delivery's).
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """A discrete event (contract section 3)."""

    ts: datetime
    device_id: str
    type: str
    bag_id: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Online/offline (retained; also the Last Will)."""

    device_id: str
    online: bool
    ts: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """What could not be stored, and why. `metric`/`value` are set for per-value rejections."""

    reason: Reason
    detail: str
    topic: str
    received_at: datetime
    device_id: str | None = None
    payload: bytes = b""
    metric: str | None = None
    value: float | None = None
    ts: datetime | None = None


@dataclass(slots=True)
class ParsedMessage:
    """Everything one MQTT message turned into."""

    domain: str | None = None
    device_id: str | None = None
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: StatusUpdate | None = None
    rejections: list[Rejection] = field(default_factory=list)
    register: DeviceInfo | None = None  # an unknown device of an auto-registering domain


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered device as the intake and the alert engine see it."""

    device_id: str
    domain: str
    site_id: str | None = None
    region: str | None = None
    profile: str = ""
    expected_interval_s: int = 60
    enabled: bool = True


@dataclass(slots=True)
class EvalBatch:
    """What one committed write hands to the alert engine: only what was newly stored
    (a redelivered reading is not in `readings`), in the same transaction."""

    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    # per-value rejections that are sensor faults (out_of_physical_range)
    faults: list[Rejection] = field(default_factory=list)
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
