"""Rule models: pydantic v2, one class per kind, a discriminated union on `kind`.

A rule is stored as the `body` jsonb of a `rules` row. Per-profile limits (a fridge vs a
freezer, a plant outlet vs a tap) live in one rule's `overrides`, so the rule id the duty
staff see is the same whatever the profile.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from ingest import DeviceInfo

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
AlertKind = Literal["value", "offline", "fault", "event", "site"]


class Scope(BaseModel):
    """Which devices a rule applies to. Empty lists mean "any"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str | None = None
    profiles: list[str] = Field(default_factory=list)
    exclude_profiles: list[str] = Field(default_factory=list)
    region: str | None = None
    site_ids: list[str] = Field(default_factory=list)
    device_ids: list[str] = Field(default_factory=list)

    def matches(self, dev: DeviceInfo) -> bool:
        """True when the rule applies to `dev`."""
        return (
            (self.domain is None or self.domain == dev.domain)
            and (not self.profiles or dev.profile in self.profiles)
            and dev.profile not in self.exclude_profiles
            and (self.region is None or self.region == dev.region)
            and (not self.site_ids or dev.site_id in self.site_ids)
            and (not self.device_ids or dev.device_id in self.device_ids)
        )


class Escalation(BaseModel):
    """Raise the alert to `severity` once it has lasted `after_s` (event time) or the value
    is `beyond` past the violated limit (in the rule's direction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Severity
    after_s: float | None = Field(default=None, ge=0)
    beyond: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_trigger(self) -> Escalation:
        if self.after_s is None and self.beyond is None:
            raise ValueError("an escalation needs after_s or beyond")
        return self


class RuleBase(BaseModel):
    """Fields every rule has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_id: str = Field(pattern=r"^[a-z0-9_.:-]{1,100}$")
    name: str = ""
    standard: str = ""  # the standard and clause the rule encodes
    severity: Severity = "warning"
    scope: Scope = Field(default_factory=Scope)
    enabled: bool = True
    manual_resolve: bool = False  # may a person resolve it by hand
    escalations: list[Escalation] = Field(default_factory=list)
    # profile -> field values replacing the rule's own for devices of that profile
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)

    alert_kind: AlertKind = "value"

    def applies_to(self, dev: DeviceInfo) -> bool:
        return self.enabled and self.scope.matches(dev)

    def for_profile(self, profile: str) -> RuleBase:
        """This rule with the overrides of `profile` applied (itself when there are none)."""
        over = self.overrides.get(profile)
        if not over:
            return self
        cache = self._profile_cache
        if profile not in cache:
            body = self.model_dump()
            body.update(over)
            body["overrides"] = {}
            cache[profile] = type(self).model_validate(body)
        return cache[profile]

    @cached_property
    def _profile_cache(self) -> dict[str, RuleBase]:
        return {}


class ThresholdRule(RuleBase):
    """Above / below / outside a range, for at least `for_s`, cleared at a separate level.

    The WHO fridge-recorder alarms (heat > +8 °C for 10 h, freeze <= -0.5 °C for 60 min,
    both continuous) are threshold rules with a long `for_s`. With `mean_s` the value
    compared is the rolling mean over that period (GB/T 18883-2022 1-h, 8-h, 24-h means),
    judged once the device has reported for `mean_min_coverage` of a whole period.
    """

    kind: Literal["threshold"] = "threshold"
    metric: str
    op: Literal["above", "below", "outside"]
    high: float | None = None
    low: float | None = None
    inclusive: bool = False  # >= / <= instead of > / <
    clear_high: float | None = None  # hysteresis; defaults to `high`
    clear_low: float | None = None  # defaults to `low`
    for_s: float = Field(default=0, ge=0)
    clear_for_s: float = Field(default=0, ge=0)
    mean_s: float | None = Field(default=None, gt=0)
    mean_min_coverage: float = Field(default=0.99, gt=0, le=1)

    @model_validator(mode="after")
    def _limits(self) -> ThresholdRule:
        if self.op in ("above", "outside") and self.high is None:
            raise ValueError(f"{self.op} needs high")
        if self.op in ("below", "outside") and self.low is None:
            raise ValueError(f"{self.op} needs low")
        if self.clear_high is not None and self.high is not None and self.clear_high > self.high:
            raise ValueError("clear_high must not be above high")
        if self.clear_low is not None and self.low is not None and self.clear_low < self.low:
            raise ValueError("clear_low must not be below low")
        return self


class CumulativeRule(RuleBase):
    """Total time beyond `limit` within a sliding `window_s` reaches `total_s` (WHO shipping
    indicators). Only time actually out of range counts: the interval after an out-of-range
    reading, up to the next reading and at most `max_hold_s`."""

    kind: Literal["cumulative"] = "cumulative"
    metric: str
    op: Literal["above", "below"]
    limit: float
    inclusive: bool = True
    total_s: float = Field(gt=0)
    window_s: float = Field(gt=0)
    max_hold_s: float = Field(default=1800, gt=0)


class RateRule(RuleBase):
    """Rate of change over `window_s` beyond `max_per_h` (units per hour)."""

    kind: Literal["rate"] = "rate"
    metric: str
    max_per_h: float = Field(gt=0)
    direction: Literal["up", "down", "both"] = "both"
    window_s: float = Field(default=900, gt=0)
    min_span_s: float = Field(default=300, ge=0)


class StuckRule(RuleBase):
    """A value that does not change (within `tolerance`) over `min_readings` readings and
    `min_duration_s`, per metric; `metrics` empty means every non-binary catalogue metric."""

    kind: Literal["stuck"] = "stuck"
    metrics: list[str] = Field(default_factory=list)
    min_readings: int | None = Field(default=10, ge=2)
    min_duration_s: float | None = Field(default=3600, ge=0)
    tolerance: float = Field(default=0.0, ge=0)
    alert_kind: AlertKind = "fault"


class NoDataRule(RuleBase):
    """Silent for `factor` x the device's expected interval, or its Last Will arrived."""

    kind: Literal["no_data"] = "no_data"
    factor: float = Field(default=3.0, gt=0)
    min_silence_s: float = Field(default=0, ge=0)
    on_last_will: bool = True
    alert_kind: AlertKind = "offline"


class SensorFaultRule(RuleBase):
    """`count` out-of-physical-range or null values within `window_s`; cleared after
    `clear_readings` good readings of the metrics that faulted."""

    kind: Literal["sensor_fault"] = "sensor_fault"
    count: int = Field(default=3, ge=1)
    window_s: float = Field(default=3600, gt=0)
    clear_readings: int = Field(default=3, ge=1)
    include_nulls: bool = True
    alert_kind: AlertKind = "fault"


class WasteStorageRule(RuleBase):
    """A bag stored and not collected: warning at `warn_s`, `limit_severity` at `limit_s`."""

    kind: Literal["waste_storage"] = "waste_storage"
    warn_s: float = Field(default=36 * 3600, gt=0)
    limit_s: float = Field(default=48 * 3600, gt=0)
    limit_severity: Severity = "critical"
    alert_kind: AlertKind = "event"


class WasteWeightRule(RuleBase):
    """Collected weight differs from sealed weight by more than max(kg, pct %)."""

    kind: Literal["waste_weight"] = "waste_weight"
    tolerance_kg: float = Field(default=0.2, ge=0)
    tolerance_pct: float = Field(default=5.0, ge=0)
    alert_kind: AlertKind = "event"
    manual_resolve: bool = True


class WasteUnsealedRule(RuleBase):
    """A bag collected that was never sealed (a seal arriving within `grace_s` is waited for;
    a seal arriving later resolves the alert)."""

    kind: Literal["waste_unsealed"] = "waste_unsealed"
    grace_s: float = Field(default=600, ge=0)
    alert_kind: AlertKind = "event"
    manual_resolve: bool = True


class WasteNotStoredRule(RuleBase):
    """A bag sealed and neither stored nor collected within `limit_s`."""

    kind: Literal["waste_not_stored"] = "waste_not_stored"
    limit_s: float = Field(default=24 * 3600, gt=0)
    alert_kind: AlertKind = "event"
    manual_resolve: bool = True


class SiteSilenceRule(RuleBase):
    """Every enabled device of a site (at least `min_devices`) silent: one site alert, and
    the per-device offline alerts held back under it."""

    kind: Literal["site_silence"] = "site_silence"
    min_devices: int = Field(default=2, ge=1)
    alert_kind: AlertKind = "site"


Rule = Annotated[
    ThresholdRule
    | CumulativeRule
    | RateRule
    | StuckRule
    | NoDataRule
    | SensorFaultRule
    | WasteStorageRule
    | WasteWeightRule
    | WasteUnsealedRule
    | WasteNotStoredRule
    | SiteSilenceRule,
    Field(discriminator="kind"),
]
RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)

# Kinds fed by a bag's events (subject "bag:<id>") rather than by a device.
BAG_KINDS = frozenset({"waste_storage", "waste_weight", "waste_unsealed", "waste_not_stored"})


def parse_rule(body: dict[str, Any] | str | bytes) -> Rule:
    """Validate a rule body (a dict, or its JSON text)."""
    if isinstance(body, str | bytes):
        return RULE_ADAPTER.validate_json(body)
    return RULE_ADAPTER.validate_python(body)
