"""What the pure evaluators hand back: actions on an episode, and the inputs they get."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest import DeviceInfo, Event, Reading, Rejection, StatusUpdate

State = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fire:
    """Open an episode. `started_at` is the event time of its first violation;
    `detected_ts` the event time at which the condition became true (a detection much
    later than that makes the alert retrospective)."""

    started_at: datetime
    detected_ts: datetime
    severity: str
    value: float | None
    threshold: float | None
    metric: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Escalate:
    at: datetime
    severity: str
    value: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Resolve:
    at: datetime
    value: float | None
    reason: str


Action = Fire | Escalate | Resolve


@dataclass(slots=True)
class Inputs:
    """What one batch brought for one subject, as the engine hands it over."""

    device: DeviceInfo | None = None
    readings: list[Reading] = field(default_factory=list)
    faults: list[Rejection] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    state: State
    actions: list[Action] = field(default_factory=list)
    due: datetime | None = None  # wake the rule's `on_time` at this wall-clock time


def ts_of(dt: datetime) -> float:
    return dt.timestamp()


def dt_of(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def fmt(v: float | None) -> str:
    return "null" if v is None else f"{v:g}"
