"""One simulated device: its physics, the faults injected into it, the reference rules run
on what it delivers, and the messages and truth records that come out, in time order.

This is one state machine, kept in one module. It is pure: simulated time comes in as
`start`/`end`, randomness from generators seeded by (seed, device id), so the same seed
gives the same messages, and the physics draws from its own stream so switching faults
on or off does not change the clean signal.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from random import Random
from typing import Any

import orjson

from ingest import CATALOGUE
from simulators import rules as R
from simulators.domains import MODELS, DomainModel, Excursion
from simulators.faults import (
    DELIVERY,
    DURATION_S,
    DURATION_SAMPLES,
    FUTURE_SKEW_LIMIT_S,
    MALFORMED_REASONS,
    ONE_SHOT,
    UNKNOWN_METRIC_NAMES,
    WASTE_ONLY,
    Injection,
    Kind,
)
from simulators.model import DeviceSpec, Message, TruthRecord, epoch_ms, iso_local, topic

Item = Message | TruthRecord
ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
BATCH_MAX = 1000  # contract: at most 1000 samples per batch
_SETTLE_CAP_S = 6 * 3600.0
_BINARY = frozenset({"door_open", "power_ok"})


@dataclass(slots=True)
class _Fault:
    fid: str
    kind: Kind
    start: float
    end: float  # planned end (event time)
    record: TruthRecord
    metric: str | None = None
    target_rule: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    fired: list[tuple[str, float]] = field(default_factory=list)
    ended_at: float | None = None


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class SimDevice:
    """Runs one device over a time range; see `run`."""

    def __init__(
        self,
        spec: DeviceSpec,
        *,
        seed: int,
        rates: Mapping[str, float] | None = None,
        injections: list[Injection] | None = None,
        natural: bool = True,
        interval_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.rates = dict(rates or {})
        self.injections = sorted(injections or [], key=lambda i: i.at_epoch())
        self.natural = natural
        self.interval_s = float(interval_s or spec.expected_interval_s)
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.model_cls: type[DomainModel] = MODELS[spec.domain]

    # -- the run -------------------------------------------------------------------

    def run(self, start: float, end: float | None = None) -> Iterator[Item]:
        """Messages and truth records from `start` until `end` (epoch seconds), ordered by
        their `at`. With `end` None the device runs for ever; open faults are then never
        finalised."""
        spec = self.spec
        sid = f"{self.seed}/{spec.device_id}"
        self.model = model = self.model_cls(spec.profile, Random(f"{sid}/model"), start)
        model.device_id = spec.device_id
        self.frng = Random(f"{sid}/faults")
        self.t_topic = topic(spec.domain, spec.device_id, "telemetry")
        self.e_topic = topic(spec.domain, spec.device_id, "event")
        self.s_topic = topic(spec.domain, spec.device_id, "status")
        self.trackers: dict[str, list[R.Tracker]] = {}
        for rule in R.rules_for(spec.domain, spec.profile):
            self.trackers.setdefault(rule.metric, []).append(R.Tracker(rule))
        self.catalogue = CATALOGUE[spec.domain]
        self.value_faults: list[_Fault] = []  # active or settling
        self.armed: dict[Kind, _Fault] = {}
        self.delivery: _Fault | None = None
        self.skew: _Fault | None = None
        self.buffer: list[dict[str, Any]] = []
        self.held_events: list[dict[str, Any]] = []
        # Bag events lost while the device was offline: bag_id -> event types.
        self.lost_bag_events: dict[str, set[str]] = {}
        self.events: list[tuple[float, int, str, dict[str, Any]]] = []
        self.ev_counter = 0
        self.seq = 0
        self.fault_no = 0
        self.last_delivered: float | None = None
        self.excursions = model.excursions_for_profile()
        self.metrics = model.fault_metrics()
        self._schedule(start)
        interval = self.interval_s
        t = start + Random(f"{sid}/phase").random() * interval
        yield Message(start, spec.device_id, self.s_topic, ONLINE, retain=True)
        out: list[Item] = []
        while end is None or t < end:
            for ev in model.advance(t):
                self._push_event(ev)
            self._flush_events(t, out)
            self._end_faults(t, out)
            self._start_due(t, out)
            self._sample(t, out)
            self._settle(t, out)
            yield from out
            out.clear()
            t += interval
        if end is not None:
            self._finish(end, out)
            yield from out

    # -- scheduling ------------------------------------------------------------------

    def _applicable(self, kind: Kind) -> bool:
        domain, profile = self.spec.domain, self.spec.profile
        if kind in WASTE_ONLY:
            return domain == "waste"
        if kind == Kind.POWER_CUT:
            return domain == "coldchain" and profile != "cold_box"
        if kind == Kind.EXCURSION:
            return bool(self.excursions)
        return True

    def _schedule(self, start: float) -> None:
        frng = self.frng
        self.next_due: dict[tuple[Kind, bool], float] = {}
        for name, rate in sorted(self.rates.items()):
            kind = Kind(name)
            if rate > 0 and self._applicable(kind):
                self.next_due[(kind, True)] = start + frng.expovariate(rate / 3600.0)
        gaps = self.model.coverage_gaps_per_h
        if self.natural and gaps > 0:
            self.next_due[(Kind.BACKLOG, False)] = start + frng.expovariate(gaps / 3600.0)
        self.pending_inj = [i for i in self.injections if self._applicable(Kind(i.kind))]

    def _start_due(self, t: float, out: list[Item]) -> None:
        while self.pending_inj and self.pending_inj[0].at_epoch() <= t:
            inj = self.pending_inj.pop(0)
            self._start(Kind(inj.kind), t, out, injection=inj)
        for key in sorted(self.next_due, key=lambda k: (self.next_due[k], k[0].value)):
            due = self.next_due[key]
            if due > t:
                continue
            kind, injected = key
            rate = self.rates.get(kind.value, 0.0) if injected else self.model.coverage_gaps_per_h
            self.next_due[key] = t + self.frng.expovariate(rate / 3600.0)
            self._start(kind, t, out, injected=injected)

    # -- fault start -------------------------------------------------------------------

    def _record(self, kind: Kind, t: float, *, injected: bool = True) -> TruthRecord:
        self.fault_no += 1
        spec = self.spec
        return TruthRecord(
            fault_id=f"{spec.device_id}/{self.fault_no}",
            device_id=spec.device_id,
            domain=spec.domain,
            profile=spec.profile,
            kind=kind.value,
            start=t,
            end=t,
            injected=injected,
        )

    def _pick_metric(self, inj: Injection | None) -> str | None:
        if inj is not None and inj.metric is not None:
            return inj.metric
        return self.frng.choice(self.metrics) if self.metrics else None

    def _duration(self, kind: Kind, inj: Injection | None) -> float:
        if inj is not None and inj.duration_s is not None:
            return inj.duration_s
        if kind in DURATION_SAMPLES:
            lo, hi = DURATION_SAMPLES[kind]
            return (self.frng.randint(lo, hi) - 0.5) * self.interval_s
        lo_s, hi_s = DURATION_S[kind]
        return self.frng.uniform(lo_s, hi_s)

    def _start(
        self,
        kind: Kind,
        t: float,
        out: list[Item],
        *,
        injection: Injection | None = None,
        injected: bool = True,
    ) -> None:
        frng = self.frng
        inj = injection
        if kind in ONE_SHOT:
            if kind in self.armed:
                return
            rec = self._record(kind, t)
            f = _Fault(rec.fault_id, kind, t, t, rec)
            if kind == Kind.SPIKE:
                f.metric = self._pick_metric(inj)
                if f.metric is None:
                    return
            if kind == Kind.MALFORMED:
                variants = sorted(MALFORMED_REASONS)
                rec.variant = inj.variant if inj and inj.variant else frng.choice(variants)
                rec.expect_rejected = MALFORMED_REASONS[rec.variant]
            elif kind == Kind.UNKNOWN_METRIC:
                name = inj.metric if inj and inj.metric else frng.choice(UNKNOWN_METRIC_NAMES)
                rec.metric = name
                rec.expect_rejected = "unknown_metric"
            elif kind == Kind.DUPLICATE:
                rec.expect_dedup = True
            self.armed[kind] = f
            return
        if kind in WASTE_ONLY:
            waste = self.model
            attr = {
                Kind.BAG_OVERDUE: "arm_overdue",
                Kind.WEIGHT_MISMATCH: "arm_mismatch",
                Kind.UNSEALED_BAG: "arm_unsealed",
            }[kind]
            setattr(waste, attr, getattr(waste, attr) + 1)
            return
        if kind in DELIVERY:
            if self.delivery is not None:
                return
            rec = self._record(kind, t, injected=injected)
            f = _Fault(rec.fault_id, kind, t, t + self._duration(kind, inj), rec)
            f.data["last_delivered"] = self.last_delivered
            self.delivery = f
            if kind == Kind.OFFLINE:
                # The broker publishes the Last Will at once: the alert is immediate.
                rec.expected_rule, rec.expected_at = R.OFFLINE, t
                out.append(
                    Message(
                        t, self.spec.device_id, self.s_topic, OFFLINE, retain=True, action="drop"
                    )
                )
            if kind == Kind.OUT_OF_ORDER:
                rec.variant = (
                    inj.variant if inj and inj.variant else frng.choice(("reversed", "shuffled"))
                )
            return
        if kind == Kind.CLOCK_SKEW:
            if self.skew is not None:
                return
            rec = self._record(kind, t)
            f = _Fault(rec.fault_id, kind, t, t + self._duration(kind, inj), rec)
            if inj is not None and inj.variant is not None:
                skew = float(inj.variant)
            elif frng.random() < 0.5:
                skew = frng.uniform(1, 7) * 86400.0  # clock ahead (RTC battery, GPS rollover)
            else:
                skew = -frng.uniform(1, 48) * 3600.0  # clock behind
            f.data["skew_s"] = skew
            rec.detail["skew_s"] = round(skew, 3)
            if skew > FUTURE_SKEW_LIMIT_S:
                rec.expect_rejected = "future_timestamp"
            self.skew = f
            return
        # Value faults.
        rec = self._record(kind, t)
        if kind == Kind.EXCURSION:
            choices: tuple[Excursion, ...] = self.excursions
            if inj is not None and (inj.variant or inj.metric):
                choices = tuple(
                    e
                    for e in choices
                    if (inj.variant in (None, e.variant)) and (inj.metric in (None, e.metric))
                )
            if not choices:
                return
            exc = frng.choice(choices)
            if self._busy(exc.metric):
                return
            f = _Fault(rec.fault_id, kind, t, t + self._duration_exc(exc, inj), rec, exc.metric)
            f.target_rule = exc.rule_id
            f.data.update(level=frng.uniform(exc.low, exc.high), tau=exc.tau_s, offset=0.0)
            rec.variant = exc.variant
            rec.detail["level"] = round(f.data["level"], 3)
        elif kind == Kind.POWER_CUT:
            if any(v.kind == Kind.POWER_CUT and v.ended_at is None for v in self.value_faults):
                return
            f = _Fault(rec.fault_id, kind, t, t + self._duration(kind, inj), rec, "temp_c")
            for ev in self.model.set_power(False, t):
                self._emit_event(ev, out)
        else:
            metric = self._pick_metric(inj)
            if metric is None:
                return
            if self._busy(metric):
                return
            f = _Fault(rec.fault_id, kind, t, t + self._duration(kind, inj), rec, metric)
            beh = self.model.behaviours[metric]
            if kind == Kind.DRIFT:
                f.data["per_s"] = beh.drift_per_h * frng.uniform(1.0, 3.0) / 3600.0
                rec.detail["drift_per_h"] = round(f.data["per_s"] * 3600.0, 4)
            elif kind == Kind.OUT_OF_RANGE:
                rec.expect_rejected = "out_of_physical_range"
                f.data["value"] = frng.choice(beh.bad_values)
                rec.detail["value"] = f.data["value"]
            f.data["bad"] = 0
        rec.metric = f.metric
        self.value_faults.append(f)

    def _busy(self, metric: str) -> bool:
        """One value fault per metric at a time, so each truth record explains its alert."""
        return any(v.metric == metric and v.ended_at is None for v in self.value_faults)

    def _duration_exc(self, exc: Excursion, inj: Injection | None) -> float:
        if inj is not None and inj.duration_s is not None:
            return inj.duration_s
        return self.frng.uniform(exc.min_s, exc.max_s)

    # -- events --------------------------------------------------------------------------

    def _push_event(self, ev: tuple[float, str, dict[str, Any]]) -> None:
        self.ev_counter += 1
        heapq.heappush(self.events, (ev[0], self.ev_counter, ev[1], ev[2]))

    def _flush_events(self, t: float, out: list[Item]) -> None:
        while self.events and self.events[0][0] <= t:
            ts, _, typ, fields = heapq.heappop(self.events)
            self._emit_event((ts, typ, fields), out)
        notes = getattr(self.model, "notes", None)
        if notes:
            for kind, bag_id, start, end, detail in notes:
                self._waste_record(Kind(kind), bag_id, start, end, detail, t, out)
            notes.clear()

    def _emit_event(self, ev: tuple[float, str, dict[str, Any]], out: list[Item]) -> None:
        ts, typ, fields = ev
        if self.skew is not None:
            ts += self.skew.data["skew_s"]
        body = {"ts": iso_local(ts), "type": typ, **fields}
        d = self.delivery
        if d is None:
            out.append(Message(ev[0], self.spec.device_id, self.e_topic, _dumps(body)))
        elif d.kind != Kind.OFFLINE:
            self.held_events.append(body)
        elif "bag_id" in fields:  # offline: the event is lost with the device
            self.lost_bag_events.setdefault(str(fields["bag_id"]), set()).add(typ)

    def _waste_record(
        self,
        kind: Kind,
        bag_id: str,
        start: float,
        end: float,
        detail: dict[str, Any],
        t: float,
        out: list[Item],
        *,
        open_: bool = False,
    ) -> None:
        rec = self._record(kind, start)
        rec.end, rec.open = end, open_
        rec.detail = {"bag_id": bag_id, **{k: round(v, 3) for k, v in detail.items()}}
        # What the service can find depends on which of the bag's events reached it.
        lost = self.lost_bag_events.pop(bag_id, set()) if kind != Kind.BAG_OVERDUE else set()
        if kind == Kind.BAG_OVERDUE:
            if "bag_stored" not in self.lost_bag_events.get(bag_id, ()):
                rec.expected_rule, rec.expected_at = R.STORAGE_OVERDUE, start + R.STORAGE_LIMIT_S
        elif "bag_collected" in lost:
            pass  # the collection never reached the service: nothing to find
        elif kind == Kind.WEIGHT_MISMATCH and "bag_sealed" not in lost:
            rec.expected_rule, rec.expected_at = R.WEIGHT_MISMATCH, end
        else:  # collected unsealed, or a mismatch whose sealing the service never saw
            rec.expected_rule, rec.expected_at = R.COLLECTED_UNSEALED, end
        if lost:
            rec.detail["undelivered"] = sorted(lost)
        rec.at = t
        out.append(rec)

    # -- samples ---------------------------------------------------------------------------

    def _sample(self, t: float, out: list[Item]) -> None:
        model = self.model
        raw = model.read()
        values: dict[str, float | None] = dict(raw)
        derived = model.derived
        spike = self.armed.get(Kind.SPIKE) if self.delivery is None else None
        touched = self._apply(values, t, derived, first=True, spike=spike)
        if touched and derived:
            model.derive(values)
        self._apply(values, t, derived, first=False, spike=spike)
        rounded = self._round(values)
        self.seq += 1
        ts = t + (self.skew.data["skew_s"] if self.skew is not None else 0.0)
        d = self.delivery
        delivered = d is None or d.kind != Kind.OFFLINE
        malformed = self.armed.pop(Kind.MALFORMED, None) if d is None else None
        if spike is not None:
            self.armed.pop(Kind.SPIKE)
            spike.record.start = spike.record.end = t
            spike.ended_at = t
            spike.record.detail["value"] = rounded.get(spike.metric or "")
            self.value_faults.append(spike)
        stored = delivered and malformed is None
        for f in self.value_faults:
            if not stored or f.ended_at is not None:
                continue
            if f.kind in (Kind.OUT_OF_RANGE, Kind.SENSOR_ERROR):
                f.data["bad"] += 1  # consecutive: every sample in the episode is bad
            elif f.kind == Kind.STUCK:
                # What the service sees of it: the frozen samples that reach it.
                f.data.setdefault("first_stored", t)
                f.data["last_stored"] = t
                f.data["stored"] = f.data.get("stored", 0) + 1
        if stored and self.skew is None:
            self._feed_rules(t, rounded, out)
        if d is not None:
            if d.kind != Kind.OFFLINE:
                self.buffer.append({"ts": epoch_ms(ts), "seq": self.seq, "values": rounded})
            return
        self.last_delivered = t
        body: dict[str, Any] = {"ts": iso_local(ts), "seq": self.seq, "values": rounded}
        unknown = self.armed.pop(Kind.UNKNOWN_METRIC, None)
        if unknown is not None:
            body["values"] = {**rounded, unknown.record.metric or "x": 1.0}
            self._one_shot_done(unknown, t, out)
        payload = _dumps(body)
        if malformed is not None:
            payload = _corrupt(payload, body, malformed.record.variant or "truncated")
            self._one_shot_done(malformed, t, out)
        dev = self.spec.device_id
        out.append(Message(t, dev, self.t_topic, payload))
        dup = self.armed.pop(Kind.DUPLICATE, None)
        if dup is not None:
            out.append(Message(t, dev, self.t_topic, payload))
            dup.record.detail["seq"] = self.seq
            self._one_shot_done(dup, t, out)

    def _one_shot_done(self, f: _Fault, t: float, out: list[Item]) -> None:
        f.record.start = f.record.end = f.record.at = t
        out.append(f.record)

    def _apply(
        self,
        values: dict[str, float | None],
        t: float,
        derived: tuple[str, ...],
        *,
        first: bool,
        spike: _Fault | None,
    ) -> bool:
        touched = False
        for f in self.value_faults:
            m = f.metric
            if m is None or m not in values or (m in derived) == first:
                continue
            x = values[m]
            if x is None:
                continue
            if f.kind == Kind.EXCURSION:
                d = f.data
                if f.ended_at is None:
                    a = 1.0 - math.exp(-(t - f.start) / d["tau"])
                    d["offset"] = (d["level"] - x) * a
                    values[m] = x + d["offset"]
                else:
                    values[m] = x + d["offset"] * math.exp(-(t - f.ended_at) / d["tau"])
            elif f.ended_at is not None:
                continue
            elif f.kind == Kind.DRIFT:
                # A drifting sensor pins at the end of its range; it does not go negative.
                cat = self.catalogue[m]
                values[m] = min(cat.high, max(cat.low, x + f.data["per_s"] * (t - f.start)))
            elif f.kind == Kind.STUCK:
                values[m] = f.data.setdefault("stuck", x)
            elif f.kind == Kind.OUT_OF_RANGE:
                values[m] = f.data["value"]
            elif f.kind == Kind.SENSOR_ERROR:
                values[m] = None
            touched = touched or values[m] != x
        if spike is not None and spike.metric in values and (spike.metric in derived) != first:
            m = spike.metric
            x = values[m]
            if x is not None:
                beh = self.model.behaviours[m]
                size = beh.spike * self.frng.uniform(0.8, 1.5)
                cat = self.catalogue[m]
                up = x + size <= cat.high
                values[m] = x + size if up or x - size < cat.low else x - size
                values[m] = min(cat.high, max(cat.low, values[m] or 0.0))
                touched = True
        return touched

    def _round(self, values: dict[str, float | None]) -> dict[str, float | int | None]:
        beh = self.model.behaviours
        out: dict[str, float | int | None] = {}
        for k, v in values.items():
            if v is None:
                out[k] = None
            elif k in _BINARY:
                out[k] = int(v)
            else:
                b = beh.get(k)
                dec = b.decimals if b is not None else 2
                out[k] = round(v) if dec == 0 else round(v, dec)
        return out

    def _feed_rules(
        self, t: float, values: Mapping[str, float | int | None], out: list[Item]
    ) -> None:
        for metric, trackers in self.trackers.items():
            v = values.get(metric)
            if v is None or not self.catalogue[metric].in_range(v):
                continue
            for tr in trackers:
                if tr.feed(t, float(v)):
                    self._attribute(tr, metric, t, out)

    def _attribute(self, tr: R.Tracker, metric: str, t: float, out: list[Item]) -> None:
        derived = self.model.derived
        best: _Fault | None = None
        for f in self.value_faults:
            related = f.metric == metric or (metric in derived and f.metric not in derived)
            if related and (best is None or f.start >= best.start):
                best = f
        if best is not None:
            best.fired.append((tr.rule.rule_id, t))
            return
        # Nothing injected explains it: the model itself crossed a limit.
        rec = self._record(Kind.EXCURSION, tr.since if tr.since is not None else t, injected=False)
        rec.kind = "natural"
        rec.metric = metric
        rec.end = rec.at = t
        rec.expected_rule, rec.expected_at = tr.rule.rule_id, t
        rec.detail["rule"] = tr.rule.params()
        d = self.delivery
        if d is not None:  # seen in a backlog: known once (and if) it is uploaded
            d.data.setdefault("natural", []).append(rec)
            return
        out.append(rec)

    # -- fault end -------------------------------------------------------------------------------

    def _end_faults(self, t: float, out: list[Item]) -> None:
        d = self.delivery
        if d is not None and t >= d.end:
            self._end_delivery(d, t, out)
        s = self.skew
        if s is not None and t >= s.end:
            s.record.end = s.record.at = t
            out.append(s.record)
            self.skew = None
        for f in self.value_faults:
            if f.ended_at is None and t >= f.end:
                f.ended_at = t
                if f.kind == Kind.POWER_CUT:
                    for ev in self.model.set_power(True, t):
                        self._emit_event(ev, out)

    def _end_delivery(self, d: _Fault, t: float, out: list[Item]) -> None:
        self.delivery = None
        rec = d.record
        rec.end = rec.at = t
        dev = self.spec.device_id
        if d.kind == Kind.OFFLINE:
            out.append(Message(t, dev, self.s_topic, ONLINE, retain=True))
            out.append(rec)
            return
        for natural in d.data.pop("natural", []):
            natural.at = t
            out.append(natural)
        samples = self.buffer
        self.buffer = []
        if d.kind == Kind.OUT_OF_ORDER:
            if rec.variant == "reversed" or len(samples) < 3:
                samples.reverse()
            else:
                first = samples[0]
                while samples[0] is first:
                    self.frng.shuffle(samples)
        for i in range(0, len(samples), BATCH_MAX):
            chunk = samples[i : i + BATCH_MAX]
            out.append(Message(t, dev, self.t_topic, _dumps({"batch": chunk})))
        for body in self.held_events:
            out.append(Message(t, dev, self.e_topic, _dumps(body)))
        self.held_events = []
        rec.detail.update(samples=len(samples), batches=math.ceil(len(samples) / BATCH_MAX))
        last = d.data["last_delivered"]
        gap_limit = R.NO_DATA_INTERVALS * self.interval_s
        # An upload just after the silence became due may beat the service's next check.
        if last is not None and t - last > gap_limit + R.DETECTION_SLACK_S:
            rec.expected_rule, rec.expected_at = R.OFFLINE, last + gap_limit
        if samples:
            self.last_delivered = t
        out.append(rec)

    def _settle(self, t: float, out: list[Item]) -> None:
        keep: list[_Fault] = []
        for f in self.value_faults:
            if f.ended_at is None or not self._settled(f, t):
                keep.append(f)
                continue
            self._finalise(f, out, t)
        self.value_faults = keep

    def _settled(self, f: _Fault, t: float) -> bool:
        assert f.ended_at is not None
        if t - f.ended_at >= _SETTLE_CAP_S:
            return True
        if f.kind == Kind.EXCURSION and t - f.ended_at < 3.0 * f.data["tau"]:
            return False
        if f.kind in (Kind.POWER_CUT, Kind.DRIFT) and t - f.ended_at < 3600.0:
            return False  # the cabinet or the reading takes a while to come back
        metrics = {f.metric, *self.model.derived}
        return not any(tr.violating for m in metrics for tr in self.trackers.get(m or "", ()))

    def _finalise(self, f: _Fault, out: list[Item], t: float, *, open_: bool = False) -> None:
        rec = f.record
        rec.end = f.ended_at if f.ended_at is not None else t
        rec.at = t
        rec.open = open_
        if f.kind in (Kind.OUT_OF_RANGE, Kind.SENSOR_ERROR):
            rec.detail["bad_samples"] = f.data["bad"]
            if f.data["bad"] >= R.SENSOR_FAULT_COUNT:
                rec.expected_rule = R.SENSOR_FAULT
        elif f.kind == Kind.STUCK and "first_stored" in f.data:
            # Expected only if the frozen value reached the service for long enough: a
            # device offline for most of the fault shows the service too little of it.
            first, last = f.data["first_stored"], f.data["last_stored"]
            if last - first >= R.STUCK_FOR_S and f.data["stored"] >= R.STUCK_MIN_READINGS:
                rec.expected_rule, rec.expected_at = R.STUCK, first + R.STUCK_FOR_S
        fired = f.fired
        if fired:
            ids = list(dict.fromkeys(r for r, _ in fired))
            first = {r: ts for r, ts in reversed(fired)}
            primary = f.target_rule if f.target_rule in ids else ids[0]
            if rec.expected_rule is None:
                rec.expected_rule, rec.expected_at = primary, first[primary]
                ids.remove(primary)
            rec.also_expected = [r for r in ids if r != rec.expected_rule]
            rule = R.rule_for(self.spec.domain, self.spec.profile, primary)
            if rule is not None:
                rec.detail["rule"] = rule.params()
        elif f.target_rule is not None:
            rule = R.rule_for(self.spec.domain, self.spec.profile, f.target_rule)
            if rule is not None:
                rec.detail["rule"] = rule.params()
            rec.detail["target_rule"] = f.target_rule
        out.append(rec)

    def _finish(self, end: float, out: list[Item]) -> None:
        """End of run: close what is still open, marked `open`."""
        d = self.delivery
        if d is not None:
            self.delivery = None
            d.record.end = d.record.at = end
            d.record.open = True
            if d.kind == Kind.OFFLINE:
                out.append(d.record)
            else:
                # The backlog was never uploaded within the run: rule crossings seen only in
                # it never reached the service, so they are not expected of it.
                for f in self.value_faults:
                    f.fired = [(r, ts) for r, ts in f.fired if ts < d.start]
                for natural in d.data.pop("natural", []):
                    natural.expected_rule, natural.expected_at = None, None
                    natural.detail["undelivered"] = True
                    natural.at = end
                    out.append(natural)
                d.record.detail["samples"] = len(self.buffer)
                last = d.data["last_delivered"]
                gap_limit = R.NO_DATA_INTERVALS * self.interval_s
                if last is not None and end - last > gap_limit + R.DETECTION_SLACK_S:
                    d.record.expected_rule, d.record.expected_at = R.OFFLINE, last + gap_limit
                out.append(d.record)
        if self.skew is not None:
            self.skew.record.end = self.skew.record.at = end
            self.skew.record.open = True
            out.append(self.skew.record)
        for f in self.value_faults:
            self._finalise(f, out, end, open_=f.ended_at is None)
        self.value_faults = []
        for kind in sorted(self.armed):
            del self.armed[kind]  # armed but never used: nothing happened
        for bag in getattr(self.model, "open_overdue", list)():
            if bag.stored_at is not None:
                held = {"stored_s": end - bag.stored_at}
                self._waste_record(
                    Kind.BAG_OVERDUE, bag.bag_id, bag.stored_at, end, held, end, out, open_=True
                )


def _corrupt(payload: bytes, body: dict[str, Any], variant: str) -> bytes:
    """A malformed version of a telemetry payload."""
    if variant == "truncated":
        return payload[: max(1, len(payload) // 2)]
    if variant == "nan_literal":
        name = next(iter(body["values"]), "x")
        return payload.replace(b'"values":{', b'"values":{"' + name.encode() + b'":NaN,', 1)
    if variant == "not_utf8":
        return payload.replace(b'"values"', b'"values\xff\xfe"', 1)
    # values_not_object
    return _dumps({**body, "values": list(body["values"].values())})
