"""Parse and validate one MQTT message into readings, events, status and rejections.

Pure: no I/O, no clock. The caller passes `now` and a device lookup. What is valid
in a partly bad message is kept; everything else becomes a `Rejection` with a
machine-readable reason (contract section 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from ingest.catalogue import CATALOGUE, DOMAINS, EVENT_FIELDS, WASTE_CATEGORIES
from ingest.model import (
    DeviceInfo,
    Event,
    ParsedMessage,
    RawMessage,
    Reading,
    Reason,
    Rejection,
    StatusUpdate,
)

_DEVICE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits (from the settings)."""

    max_payload_bytes: int = 256 * 1024
    max_batch_samples: int = 1000
    max_future_skew_s: float = 300.0
    retention_days: int = 1096
    auto_register_domains: frozenset[str] = field(default_factory=frozenset)


class _Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: StrictInt | str | None = None
    seq: StrictInt | None = None
    values: dict[str, Any]


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: list[dict[str, Any]]


class _Status(BaseModel):
    model_config = ConfigDict(extra="allow")
    online: StrictBool
    ts: StrictInt | str | None = None


class BadTimestamp(ValueError):
    """A `ts` that is neither RFC 3339 with an offset nor integer epoch milliseconds."""


def parse_ts(value: int | str) -> datetime:
    """RFC 3339 with an offset, or integer epoch milliseconds -> aware UTC datetime."""
    if isinstance(value, int):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except OverflowError as exc:
            raise BadTimestamp(f"epoch milliseconds out of range: {value}") from exc
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadTimestamp(f"not RFC 3339: {value[:64]!r}") from exc
    if dt.tzinfo is None:
        raise BadTimestamp(f"timestamp has no UTC offset: {value[:64]!r}")
    return dt.astimezone(UTC)


def parse_topic(topic: str) -> tuple[str, str, str] | str:
    """`hm/v1/{domain}/{device_id}/{channel}` -> (domain, device_id, channel), or an error."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "hm" or parts[1] != "v1":
        return "topic is not hm/v1/{domain}/{device_id}/{channel}"
    _, _, domain, device_id, channel = parts
    if domain not in DOMAINS:
        return f"unknown domain {domain[:32]!r}"
    if not _DEVICE_RE.match(device_id):
        return "device_id must match [A-Za-z0-9_-]{1,64}"
    if channel not in ("telemetry", "event", "status"):
        return f"unknown channel {channel[:32]!r}"
    return domain, device_id, channel


class _Ctx:
    """Per-message scratch: where rejections go, and the clock."""

    __slots__ = ("device_id", "msg", "now", "out")

    def __init__(self, msg: RawMessage, now: datetime, out: ParsedMessage, device_id: str | None):
        self.msg = msg
        self.now = now
        self.out = out
        self.device_id = device_id

    def reject(
        self,
        reason: Reason,
        detail: str,
        *,
        metric: str | None = None,
        value: float | None = None,
        ts: datetime | None = None,
    ) -> None:
        self.out.rejections.append(
            Rejection(
                reason=reason,
                detail=detail,
                topic=self.msg.topic,
                received_at=self.msg.received_at,
                device_id=self.device_id,
                payload=self.msg.payload,
                metric=metric,
                value=value,
                ts=ts,
            )
        )


def parse_message(
    msg: RawMessage,
    *,
    now: datetime,
    lookup: Callable[[str], DeviceInfo | None],
    limits: Limits,
    topic: tuple[str, str, str] | str | None = None,
) -> ParsedMessage:
    """Turn one raw message into what to store and what to reject. `topic` is
    `parse_topic(msg.topic)` when the caller already has it."""
    out = ParsedMessage()
    if topic is None:
        topic = parse_topic(msg.topic)
    if isinstance(topic, str):
        _Ctx(msg, now, out, None).reject(Reason.BAD_TOPIC, topic)
        return out
    domain, device_id, channel = topic
    out.domain, out.device_id = domain, device_id
    ctx = _Ctx(msg, now, out, device_id)

    device = lookup(device_id)
    if device is None:
        if domain not in limits.auto_register_domains:
            ctx.reject(Reason.UNKNOWN_DEVICE, f"device {device_id} is not registered")
            return out
        device = DeviceInfo(device_id=device_id, domain=domain)
        out.register = device
    if not device.enabled:
        ctx.reject(Reason.DEVICE_DISABLED, f"device {device_id} is disabled")
        return out
    if device.domain != domain:
        ctx.reject(
            Reason.DOMAIN_MISMATCH,
            f"device {device_id} is registered in {device.domain}, topic says {domain}",
        )
        return out

    if len(msg.payload) > limits.max_payload_bytes:
        ctx.reject(
            Reason.TOO_LARGE,
            f"payload of {len(msg.payload)} bytes exceeds {limits.max_payload_bytes}",
        )
        return out
    try:
        text = msg.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        ctx.reject(Reason.BAD_ENCODING, f"payload is not UTF-8: {exc.reason} at byte {exc.start}")
        return out
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN/Infinity literals and nesting deeper than 1024 as well.
        ctx.reject(Reason.BAD_JSON, f"not valid JSON: {str(exc)[:200]}")
        return out
    if not isinstance(doc, dict):
        ctx.reject(Reason.SCHEMA, f"payload must be a JSON object, got {type(doc).__name__}")
        return out

    if channel == "telemetry":
        _telemetry(ctx, doc, domain, device_id, limits)
    elif channel == "event":
        _event(ctx, doc, domain, device_id, limits)
    else:
        _status(ctx, doc, device_id)
    return out


def _telemetry(ctx: _Ctx, doc: dict[str, Any], domain: str, device_id: str, limits: Limits) -> None:
    if "batch" in doc:
        try:
            batch = _Batch.model_validate(doc)
        except ValidationError as exc:
            ctx.reject(Reason.SCHEMA, _first_error(exc))
            return
        if len(batch.batch) > limits.max_batch_samples:
            ctx.reject(
                Reason.TOO_LARGE,
                f"batch of {len(batch.batch)} samples exceeds {limits.max_batch_samples}",
            )
            return
        if not batch.batch:
            ctx.reject(Reason.SCHEMA, "batch is empty")
            return
        for i, raw in enumerate(batch.batch):
            _sample(ctx, raw, domain, device_id, limits, where=f"batch[{i}]", ts_required=True)
    else:
        _sample(ctx, doc, domain, device_id, limits, where="sample", ts_required=False)


def _sample(
    ctx: _Ctx,
    raw: Any,
    domain: str,
    device_id: str,
    limits: Limits,
    *,
    where: str,
    ts_required: bool,
) -> None:
    if not isinstance(raw, dict):
        ctx.reject(Reason.SCHEMA, f"{where}: a sample must be an object")
        return
    try:
        sample = _Sample.model_validate(raw)
    except ValidationError as exc:
        ctx.reject(Reason.SCHEMA, f"{where}: {_first_error(exc)}")
        return
    estimated = False
    if sample.ts is None:
        if ts_required:
            ctx.reject(Reason.SCHEMA, f"{where}: `ts` is required in a batch")
            return
        ts, estimated = ctx.msg.received_at, True
    else:
        try:
            ts = parse_ts(sample.ts)
        except BadTimestamp as exc:
            ctx.reject(Reason.SCHEMA, f"{where}: {exc}")
            return
    if ts > ctx.now + timedelta(seconds=limits.max_future_skew_s):
        ctx.reject(
            Reason.FUTURE_TIMESTAMP,
            f"{where}: ts {ts.isoformat()} is more than {limits.max_future_skew_s:g} s ahead",
            ts=ts,
        )
        return
    if ts < ctx.now - timedelta(days=limits.retention_days):
        ctx.reject(
            Reason.TOO_OLD,
            f"{where}: ts {ts.isoformat()} is older than the {limits.retention_days}-day retention",
            ts=ts,
        )
        return
    if not sample.values:
        ctx.reject(Reason.SCHEMA, f"{where}: `values` is empty")
        return
    catalogue = CATALOGUE[domain]
    for name, value in sample.values.items():
        entry = catalogue.get(name)
        if entry is None:
            ctx.reject(
                Reason.UNKNOWN_METRIC,
                f"{where}: {name[:64]!r} is not a {domain} metric",
                metric=name[:64],
                ts=ts,
            )
            continue
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                ctx.reject(
                    Reason.SCHEMA,
                    f"{where}: {name} must be a number or null, got {type(value).__name__}",
                    metric=name,
                    ts=ts,
                )
                continue
            value = float(value)
            if not math.isfinite(value):  # a huge integer literal overflows to inf
                ctx.reject(Reason.SCHEMA, f"{where}: {name} is not finite", metric=name, ts=ts)
                continue
            if not entry.in_range(value):
                ctx.reject(
                    Reason.OUT_OF_PHYSICAL_RANGE,
                    f"{where}: {name}={value:g} outside [{entry.low:g}, {entry.high:g}]",
                    metric=name,
                    value=value,
                    ts=ts,
                )
                continue
        ctx.out.readings.append(
            Reading(
                ts=ts,
                device_id=device_id,
                metric=name,
                value=value,
                seq=sample.seq,
                received_at=ctx.msg.received_at,
                ts_estimated=estimated,
                redelivered=estimated and ctx.msg.dup and sample.seq is not None,
            )
        )


def _event(ctx: _Ctx, doc: dict[str, Any], domain: str, device_id: str, limits: Limits) -> None:
    etype = doc.get("type")
    if not isinstance(etype, str):
        ctx.reject(Reason.SCHEMA, "event: `type` (string) is required")
        return
    required = EVENT_FIELDS.get(domain, {}).get(etype)
    if required is None:
        ctx.reject(Reason.UNKNOWN_EVENT, f"event: {etype[:64]!r} is not a {domain} event")
        return
    missing = [f for f in required if doc.get(f) is None]
    if missing:
        ctx.reject(Reason.SCHEMA, f"event {etype}: missing {', '.join(missing)}")
        return
    raw_ts = doc.get("ts")
    if raw_ts is None:
        ts = ctx.msg.received_at
    elif isinstance(raw_ts, int | str) and not isinstance(raw_ts, bool):
        try:
            ts = parse_ts(raw_ts)
        except BadTimestamp as exc:
            ctx.reject(Reason.SCHEMA, f"event {etype}: {exc}")
            return
    else:
        ctx.reject(Reason.SCHEMA, f"event {etype}: `ts` must be RFC 3339 or epoch ms")
        return
    if ts > ctx.now + timedelta(seconds=limits.max_future_skew_s):
        ctx.reject(Reason.FUTURE_TIMESTAMP, f"event {etype}: ts {ts.isoformat()} ahead", ts=ts)
        return
    if "weight_kg" in doc:
        w = doc["weight_kg"]
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1000:
            ctx.reject(Reason.SCHEMA, f"event {etype}: weight_kg must be a number in [0, 1000]")
            return
    if etype == "bag_sealed" and doc.get("category") not in WASTE_CATEGORIES:
        ctx.reject(
            Reason.SCHEMA,
            f"event {etype}: category must be one of {', '.join(WASTE_CATEGORIES)}",
        )
        return
    bag_id = doc.get("bag_id")
    if bag_id is not None and (not isinstance(bag_id, str) or not 0 < len(bag_id) <= 128):
        ctx.reject(Reason.SCHEMA, f"event {etype}: bag_id must be a string of 1-128 chars")
        return
    attrs = {k: v for k, v in doc.items() if k not in ("ts", "type", "bag_id")}
    ctx.out.events.append(
        Event(
            ts=ts,
            device_id=device_id,
            type=etype,
            bag_id=bag_id,
            attrs=attrs,
            received_at=ctx.msg.received_at,
        )
    )


def _status(ctx: _Ctx, doc: dict[str, Any], device_id: str) -> None:
    try:
        status = _Status.model_validate(doc)
    except ValidationError as exc:
        ctx.reject(Reason.SCHEMA, f"status: {_first_error(exc)}")
        return
    ts = ctx.msg.received_at
    if status.ts is not None:
        try:
            ts = parse_ts(status.ts)
        except BadTimestamp as exc:
            ctx.reject(Reason.SCHEMA, f"status: {exc}")
            return
    ctx.out.status = StatusUpdate(device_id=device_id, online=status.online, ts=ts)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "payload"
    return f"{loc}: {err['msg']}"
