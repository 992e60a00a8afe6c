"""Fault kinds, their rates and durations, and explicit injections for tests.

A rate is the expected number of occurrences per device per hour of simulated time
(a Poisson process), so it does not change with the reporting interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    """Every fault the simulators inject."""

    EXCURSION = "excursion"  # value beyond the limit for a duration
    DRIFT = "drift"  # slow sensor drift towards the limit
    STUCK = "stuck"  # the same value over and over
    SPIKE = "spike"  # one noisy sample, still physically possible
    OFFLINE = "offline"  # connection cut without DISCONNECT: the Last Will fires
    BACKLOG = "backlog"  # store-and-forward: samples withheld, then sent as a `batch`
    OUT_OF_ORDER = "out_of_order"  # a backlog whose batch is not sorted by time
    DUPLICATE = "duplicate"  # the same telemetry message delivered twice
    CLOCK_SKEW = "clock_skew"  # the device clock is off for a while
    MALFORMED = "malformed"  # a payload that is not valid contract JSON
    OUT_OF_RANGE = "out_of_range"  # values outside the physical range (broken sensor)
    SENSOR_ERROR = "sensor_error"  # the sensor reports null (error)
    UNKNOWN_METRIC = "unknown_metric"  # a metric name not in the catalogue
    POWER_CUT = "power_cut"  # coldchain: mains lost, the cabinet warms
    BAG_OVERDUE = "bag_overdue"  # waste: a bag not collected within 48 h
    WEIGHT_MISMATCH = "weight_mismatch"  # waste: collected weight differs from sealed
    UNSEALED_BAG = "unsealed_bag"  # waste: a bag collected that was never sealed


KINDS: Final = tuple(k.value for k in Kind)
# Faults that act on one sample only (armed, then used on the next published sample).
ONE_SHOT: Final = frozenset({Kind.SPIKE, Kind.DUPLICATE, Kind.MALFORMED, Kind.UNKNOWN_METRIC})
# Faults that change what the device delivers; at most one at a time.
DELIVERY: Final = frozenset({Kind.OFFLINE, Kind.BACKLOG, Kind.OUT_OF_ORDER})
# Faults on one metric's values.
VALUE: Final = frozenset(
    {
        Kind.EXCURSION,
        Kind.DRIFT,
        Kind.STUCK,
        Kind.SPIKE,
        Kind.OUT_OF_RANGE,
        Kind.SENSOR_ERROR,
        Kind.POWER_CUT,
    }
)
WASTE_ONLY: Final = frozenset({Kind.BAG_OVERDUE, Kind.WEIGHT_MISMATCH, Kind.UNSEALED_BAG})

_M, _H = 60.0, 3600.0
# Duration ranges in seconds; in samples (negative numbers) for the sample-counted kinds.
DURATION_S: Final[dict[str, tuple[float, float]]] = {
    Kind.DRIFT: (2 * _H, 12 * _H),
    Kind.STUCK: (20 * _M, 4 * _H),
    Kind.OFFLINE: (5 * _M, 3 * _H),
    Kind.BACKLOG: (10 * _M, 3 * _H),
    Kind.CLOCK_SKEW: (10 * _M, 2 * _H),
    Kind.POWER_CUT: (30 * _M, 6 * _H),
}
DURATION_SAMPLES: Final[dict[str, tuple[int, int]]] = {
    Kind.OUT_OF_ORDER: (3, 20),
    Kind.OUT_OF_RANGE: (1, 8),
    Kind.SENSOR_ERROR: (1, 8),
}

# Malformed variants and the rejection reason the service should record for each.
MALFORMED_REASONS: Final = {
    "truncated": "bad_json",
    "nan_literal": "bad_json",
    "not_utf8": "bad_encoding",
    "values_not_object": "schema",
}
UNKNOWN_METRIC_NAMES: Final = ("temp_f", "humidity", "co2", "chlorine", "signal_dbm")
# contract: payloads older than this in the future are rejected (Settings.max_future_skew_s).
FUTURE_SKEW_LIMIT_S: Final = 300.0


class FaultSpecError(ValueError):
    """A --faults specification that cannot be parsed."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"bad fault spec {spec!r}: {reason}")
        self.spec = spec
        self.reason = reason


def parse_faults(spec: str) -> dict[str, float]:
    """`"excursion=0.01,offline=0.002"` -> rates per device-hour. `all=R` sets every kind."""
    rates: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise FaultSpecError(spec, f"{part!r} has no '=RATE'")
        try:
            rate = float(value)
        except ValueError:
            raise FaultSpecError(spec, f"rate {value!r} is not a number") from None
        if rate < 0:
            raise FaultSpecError(spec, f"rate of {name} is negative")
        if name == "all":
            rates.update(dict.fromkeys(KINDS, rate))
        elif name in KINDS:
            rates[name] = rate
        else:
            raise FaultSpecError(spec, f"unknown fault {name!r}; known: {', '.join(KINDS)}")
    return rates


@dataclass(frozen=True, slots=True)
class Injection:
    """One fault at a chosen time, for tests and demos.

    `device` is a device index in the fleet, a device id, or None for every device.
    Unset duration, metric and variant are drawn as for a random fault.
    """

    kind: str
    at: datetime | float
    device: int | str | None = 0
    duration_s: float | None = None
    metric: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def at_epoch(self) -> float:
        return self.at.timestamp() if isinstance(self.at, datetime) else float(self.at)
