"""What the pure simulation layer produces: messages as data, ground-truth records, device specs.

Simulated time is a float of epoch seconds (UTC) inside the models, for speed; it becomes
an aware datetime only where a message or a truth record is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import orjson

# Devices in China report local time; RFC 3339 timestamps carry the +08:00 offset.
CHINA_TZ = timezone(timedelta(hours=8), "CST")
CHINA_OFFSET_S = 8 * 3600

Action = Literal["publish", "drop"]


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device as the registry sees it."""

    device_id: str
    domain: str
    profile: str
    site_id: str
    region: str
    expected_interval_s: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Site:
    """A simulated facility."""

    site_id: str
    name: str
    kind: str
    region: str


@dataclass(frozen=True, slots=True)
class Message:
    """One thing the publishing layer does at simulated time `at` (epoch seconds).

    `action` "publish" sends `payload` on `topic`; "drop" cuts the device's connection
    without DISCONNECT so the broker publishes its Last Will (`payload` on `topic`,
    retained).
    """

    at: float
    device_id: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    action: Action = "publish"

    def json(self) -> Any:
        """The payload decoded (for tests and tools); raises on a malformed payload."""
        return orjson.loads(self.payload)


@dataclass(slots=True)
class TruthRecord:
    """One injected fault (or one natural episode a rule pack should alert on).

    Written as one JSON line; the schema is documented in docs/simulators.md.
    """

    fault_id: str
    device_id: str
    domain: str
    profile: str
    kind: str
    start: float
    end: float
    at: float = 0.0  # simulated time at which the record was finalised
    metric: str | None = None
    variant: str | None = None
    injected: bool = True
    expected_rule: str | None = None
    also_expected: list[str] = field(default_factory=list)
    expected_at: float | None = None  # event time at which the reference rule fired
    expect_rejected: str | None = None
    expect_dedup: bool = False
    open: bool = False  # still active when the run ended
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "device_id": self.device_id,
            "domain": self.domain,
            "profile": self.profile,
            "kind": self.kind,
            "variant": self.variant,
            "metric": self.metric,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "injected": self.injected,
            "expected_rule": self.expected_rule,
            "also_expected": list(self.also_expected),
            "expected_at": None if self.expected_at is None else iso_utc(self.expected_at),
            "expect_rejected": self.expect_rejected,
            "expect_dedup": self.expect_dedup,
            "open": self.open,
            "detail": self.detail,
        }


def topic(domain: str, device_id: str, channel: str) -> str:
    return f"hm/v1/{domain}/{device_id}/{channel}"


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def to_epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: simulated time must be timezone-aware")
    return dt.timestamp()


def iso_utc(t: float) -> str:
    return _iso(datetime.fromtimestamp(t, UTC))


def iso_local(t: float) -> str:
    """RFC 3339 in China time, as devices send it: seconds, or milliseconds when needed."""
    return _iso(datetime.fromtimestamp(t, CHINA_TZ))


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


def epoch_ms(t: float) -> int:
    return round(t * 1000)


def local_hour(t: float) -> float:
    """Hour of day (0-24) in China time."""
    return ((t + CHINA_OFFSET_S) % 86400.0) / 3600.0


def local_day(t: float) -> int:
    """Days since the epoch in China time (changes at local midnight)."""
    return int((t + CHINA_OFFSET_S) // 86400)
