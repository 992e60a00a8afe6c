"""Pure rule evaluation on event time: state in (JSON-serialisable dict), actions out.

Nothing here reads the clock, the database or the broker: `now` (the wall-clock time of
detection) is a parameter, and times inside a state are epoch seconds (floats), so a state
round-trips through jsonb unchanged. One evaluator per rule kind:

    evaluate(rule, state, inputs, now) -> Outcome(state, actions, due)
    on_time(rule, state, now)          -> Outcome   (time-driven rules, when `due` passed)

Readings older than the last one a state has seen are skipped here; the engine replays
them from the database (see `alerts.engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from alerts.actions import (
    Action,
    Escalate,
    Fire,
    Inputs,
    Outcome,
    Resolve,
    State,
    dt_of,
    fmt,
    ts_of,
)
from alerts.rules import (
    SEVERITY_RANK,
    CumulativeRule,
    NoDataRule,
    RateRule,
    RuleBase,
    SensorFaultRule,
    StuckRule,
    ThresholdRule,
)
from ingest import CATALOGUE, Reading


def _maybe_escalate(
    rule: RuleBase, st: State, t: float, distance: float | None, value: float | None
) -> Escalate | None:
    """The highest escalation the episode now qualifies for, if above its severity."""
    cur = SEVERITY_RANK[st["sev"]]
    best: str | None = None
    for esc in rule.escalations:
        rank = SEVERITY_RANK[esc.severity]
        if rank <= cur or (best is not None and rank <= SEVERITY_RANK[best]):
            continue
        by_time = esc.after_s is not None and t - st["start"] >= esc.after_s
        by_value = esc.beyond is not None and distance is not None and distance >= esc.beyond
        if by_time or by_value:
            best = esc.severity
    if best is None:
        return None
    st["sev"] = best
    why = f"lasted {(t - st['start']) / 60:.0f} min" + (
        f", {fmt(distance)} beyond the limit" if distance is not None else ""
    )
    return Escalate(dt_of(t), best, value, why)


def _fresh(readings: list[Reading], metric: str, st: State) -> list[Reading]:
    """Non-null readings of `metric` newer than the state's last, in event-time order."""
    last = st.get("last")
    out = [r for r in readings if r.metric == metric and r.value is not None]
    out.sort(key=lambda r: r.ts)
    if last is not None:
        out = [r for r in out if ts_of(r.ts) > last]
    return out


# ---------------------------------------------------------------- threshold

MEAN_BUCKETS = 240


def violation(rule: ThresholdRule, v: float) -> tuple[float, float] | None:
    """(distance beyond the limit, the limit) when `v` violates the rule, else None."""
    hi, lo = rule.high, rule.low
    if rule.op != "below" and hi is not None and (v > hi or (rule.inclusive and v == hi)):
        return v - hi, hi
    if rule.op != "above" and lo is not None and (v < lo or (rule.inclusive and v == lo)):
        return lo - v, lo
    return None


def cleared(rule: ThresholdRule, v: float) -> bool:
    """True when `v` is back on the right side of the clear level(s) (hysteresis)."""
    ok = True
    if rule.op in ("above", "outside") and rule.high is not None:
        ch = rule.clear_high if rule.clear_high is not None else rule.high
        ok = ok and (v < ch if rule.inclusive else v <= ch)
    if rule.op in ("below", "outside") and rule.low is not None:
        cl = rule.clear_low if rule.clear_low is not None else rule.low
        ok = ok and (v > cl if rule.inclusive else v >= cl)
    return ok


def _threshold(rule: ThresholdRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    st.setdefault("active", False)
    for r in _fresh(inp.readings, rule.metric, st):
        t = ts_of(r.ts)
        st["last"] = t
        assert r.value is not None
        v = r.value
        if rule.mean_s is not None:
            # Sums in MEAN_BUCKETS buckets per period keep the state small (a 24-h mean
            # of 1-min readings would otherwise carry 1440 samples through every batch);
            # a bucket leaves the window when its start does: within 1/240 of the period.
            width = rule.mean_s / MEAN_BUCKETS
            start = t - t % width
            win = [b for b in st.get("win", []) if b[0] > t - rule.mean_s]
            if win and win[-1][0] == start:
                win[-1][1] += v
                win[-1][2] += 1
            else:
                win.append([start, v, 1])
            st["win"] = win
            first = st.setdefault("first", t)
            if t - first < rule.mean_s * rule.mean_min_coverage:
                continue  # the device has not reported for (most of) a whole period yet
            v = sum(b[1] for b in win) / sum(b[2] for b in win)
        hit = violation(rule, v)
        if not st["active"]:
            if hit is None:
                st["pend"] = None
                continue
            if st.get("pend") is None:
                st["pend"] = t
            if t - st["pend"] >= rule.for_s:
                st.update(active=True, start=st["pend"], sev=rule.severity, cpend=None, peak=v)
                what = "mean " if rule.mean_s else ""
                cmp_ = ">" if hit[1] == rule.high else "<"
                msg = (
                    f"{rule.name or rule.rule_id}: {rule.metric} {what}{fmt(v)} {cmp_} "
                    f"{fmt(hit[1])} for {(t - st['pend']) / 60:.0f} min"
                )
                actions.append(
                    Fire(dt_of(st["pend"]), r.ts, rule.severity, v, hit[1], rule.metric, msg)
                )
                esc = _maybe_escalate(rule, st, t, hit[0], v)
                if esc:
                    actions.append(esc)
            continue
        # active episode
        if hit is not None and abs(hit[0]) > abs(violation_distance(rule, st["peak"])):
            st["peak"] = v
        if cleared(rule, v):
            if st.get("cpend") is None:
                st["cpend"] = t
            if t - st["cpend"] >= rule.clear_for_s:
                actions.append(Resolve(dt_of(st["cpend"]), v, f"{rule.metric} {fmt(v)} back"))
                st.update(active=False, pend=None, cpend=None)
            continue
        st["cpend"] = None
        esc = _maybe_escalate(rule, st, t, hit[0] if hit else None, v)
        if esc:
            actions.append(esc)
    return Outcome(st, actions)


def violation_distance(rule: ThresholdRule, v: float) -> float:
    hit = violation(rule, v)
    return hit[0] if hit else 0.0


# ---------------------------------------------------------------- cumulative


def _out(rule: CumulativeRule, v: float) -> bool:
    if rule.op == "above":
        return v > rule.limit or (rule.inclusive and v == rule.limit)
    return v < rule.limit or (rule.inclusive and v == rule.limit)


def _cumulative(rule: CumulativeRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    st.setdefault("active", False)
    segs: list[list[float]] = st.get("segs", [])
    for r in _fresh(inp.readings, rule.metric, st):
        t = ts_of(r.ts)
        assert r.value is not None
        last, last_out = st.get("last"), st.get("out", False)
        if last is not None and last_out:
            end = min(t, last + rule.max_hold_s)
            if segs and segs[-1][1] >= last:
                segs[-1][1] = max(segs[-1][1], end)
            else:
                segs.append([last, end])
        st["last"], st["out"] = t, _out(rule, r.value)
        # slide the window
        lo = t - rule.window_s
        segs = [[max(s, lo), e] for s, e in segs if e > lo]
        total = sum(e - s for s, e in segs)
        st["total"] = total
        if not st["active"] and total >= rule.total_s:
            start = segs[-1][0]
            st.update(active=True, start=start, sev=rule.severity)
            msg = (
                f"{rule.name or rule.rule_id}: {rule.metric} {'>=' if rule.op == 'above' else '<='}"
                f" {fmt(rule.limit)} for {total / 3600:.1f} h cumulative"
                f" in {rule.window_s / 3600:.0f} h"
            )
            actions.append(
                Fire(dt_of(start), r.ts, rule.severity, r.value, rule.limit, rule.metric, msg)
            )
        elif st["active"] and total < rule.total_s:
            actions.append(Resolve(r.ts, r.value, "cumulative time back under the limit"))
            st["active"] = False
        if st["active"]:
            esc = _maybe_escalate(rule, st, t, None, r.value)
            if esc:
                actions.append(esc)
    st["segs"] = segs
    return Outcome(st, actions)


# ---------------------------------------------------------------- rate of change


def _rate(rule: RateRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    st.setdefault("active", False)
    for r in _fresh(inp.readings, rule.metric, st):
        t = ts_of(r.ts)
        assert r.value is not None
        st["last"] = t
        win = [s for s in st.get("win", []) if s[0] >= t - rule.window_s]
        win.append([t, r.value])
        st["win"] = win
        t0, v0 = win[0]
        if t - t0 < max(rule.min_span_s, 1e-9):
            continue
        per_h = (r.value - v0) / ((t - t0) / 3600)
        over = (rule.direction in ("up", "both") and per_h > rule.max_per_h) or (
            rule.direction in ("down", "both") and -per_h > rule.max_per_h
        )
        if over and not st["active"]:
            st.update(active=True, start=t, sev=rule.severity)
            msg = f"{rule.name or rule.rule_id}: {rule.metric} changing {per_h:+.3g}/h"
            actions.append(Fire(r.ts, r.ts, rule.severity, per_h, rule.max_per_h, rule.metric, msg))
        elif over:
            esc = _maybe_escalate(rule, st, t, abs(per_h) - rule.max_per_h, per_h)
            if esc:
                actions.append(esc)
        elif st["active"]:
            actions.append(Resolve(r.ts, per_h, "rate back within the limit"))
            st["active"] = False
    return Outcome(st, actions)


# ---------------------------------------------------------------- stuck value


def stuck_metrics(rule: StuckRule, domain: str | None) -> Callable[[str], bool]:
    """Which metrics the stuck rule watches on a device of `domain`."""
    if rule.metrics:
        wanted = set(rule.metrics)
        return lambda m: m in wanted
    cat = CATALOGUE.get(domain or "", {})
    return lambda m: m in cat and not cat[m].binary


def _stuck(rule: StuckRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    st.setdefault("active", False)
    per: dict[str, dict[str, Any]] = st.setdefault("m", {})
    watch = stuck_metrics(rule, inp.device.domain if inp.device else None)
    rs = sorted(
        (r for r in inp.readings if r.value is not None and watch(r.metric)), key=lambda r: r.ts
    )
    for r in rs:
        t = ts_of(r.ts)
        assert r.value is not None
        m = per.get(r.metric)
        if m is not None and t <= m["last"]:
            continue
        if m is None or abs(r.value - m["ref"]) > rule.tolerance:
            m = {"ref": r.value, "since": t, "n": 1, "last": t}
        else:
            m.update(n=m["n"] + 1, last=t)
        per[r.metric] = m
        stuck = [
            name
            for name, s in per.items()
            if (rule.min_readings is None or s["n"] >= rule.min_readings)
            and (rule.min_duration_s is None or s["last"] - s["since"] >= rule.min_duration_s)
        ]
        if stuck and not st["active"]:
            name = stuck[0]
            s = per[name]
            st.update(active=True, start=s["since"], sev=rule.severity, metric=name)
            msg = (
                f"{rule.name or rule.rule_id}: {name} stuck at {fmt(s['ref'])} for "
                f"{s['n']} readings / {(s['last'] - s['since']) / 60:.0f} min"
            )
            actions.append(Fire(dt_of(s["since"]), r.ts, rule.severity, s["ref"], None, name, msg))
        elif not stuck and st["active"]:
            actions.append(Resolve(r.ts, r.value, f"{r.metric} changing again"))
            st["active"] = False
    return Outcome(st, actions)


# ---------------------------------------------------------------- sensor fault


def _sensor_fault(rule: SensorFaultRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    st.setdefault("active", False)
    obs: list[tuple[datetime, str, bool, float | None]] = []
    for f in inp.faults:
        obs.append((f.ts or f.received_at, f.metric or "", True, f.value))
    for r in inp.readings:
        if r.value is None:
            if rule.include_nulls:
                obs.append((r.ts, r.metric, True, None))
        else:
            obs.append((r.ts, r.metric, False, r.value))
    obs.sort(key=lambda o: o[0])
    faults: list[float] = st.get("f", [])
    fmetrics: list[str] = st.get("fm", [])
    for at, metric_, bad, value in obs:
        t = ts_of(at)
        if bad:
            faults = [x for x in faults if x > t - rule.window_s] + [t]
            st["good"] = 0
            if metric_ not in fmetrics:
                fmetrics.append(metric_)
            if not st["active"] and len(faults) >= rule.count:
                st.update(active=True, start=faults[0], sev=rule.severity, metric=metric_)
                msg = (
                    f"{rule.name or rule.rule_id}: {len(faults)} faulty values "
                    f"({', '.join(fmetrics)}) in {rule.window_s / 60:.0f} min"
                )
                actions.append(Fire(dt_of(faults[0]), at, rule.severity, value, None, metric_, msg))
            elif st["active"]:
                esc = _maybe_escalate(rule, st, t, None, value)
                if esc:
                    actions.append(esc)
        elif metric_ in fmetrics:
            st["good"] = st.get("good", 0) + 1
            if st["active"] and st["good"] >= rule.clear_readings:
                actions.append(Resolve(at, value, f"{st['good']} good readings"))
                st["active"] = False
                faults, fmetrics = [], []
    st["f"], st["fm"] = faults, fmetrics
    return Outcome(st, actions)


# ---------------------------------------------------------------- no data


def no_data_due(rule: NoDataRule, st: State) -> datetime | None:
    """When the device counts as offline: at once after a Last Will, else `factor` x its
    interval after the last message; None while offline already or never seen."""
    if st.get("active"):
        return None
    if st.get("lwt") is not None:
        return dt_of(st["lwt"])
    if st.get("seen") is None:
        return None
    return dt_of(st["seen"] + max(rule.factor * st.get("iv", 60), rule.min_silence_s))


def _no_data(rule: NoDataRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    """Track the last message (receive time) and Last Will; resolve when data returns.

    Opening is left to `no_data_on_time` even for a Last Will (due at once), so the
    engine can hold it back under a site alert when the whole site went down.
    """
    actions: list[Action] = []
    st.setdefault("active", False)
    if inp.device is not None:
        st["iv"] = inp.device.expected_interval_s
    seen = [r.received_at or now for r in inp.readings] + [e.received_at or now for e in inp.events]
    data_ts = [r.ts for r in inp.readings] + [e.ts for e in inp.events]
    data_ts += [s.ts for s in inp.statuses if s.online]
    seen += [now for s in inp.statuses if s.online]
    if seen:
        st["seen"] = max([st.get("seen") or 0.0, *(ts_of(x) for x in seen)])
    wills = [s for s in inp.statuses if not s.online]
    last_will = max(wills, key=lambda s: s.ts) if wills else None
    if last_will is not None and rule.on_last_will and all(ts <= last_will.ts for ts in data_ts):
        if not st["active"]:
            st["lwt"] = ts_of(last_will.ts)
    elif data_ts:
        st["lwt"] = None
        if st["active"]:
            st["active"] = False
            actions.append(Resolve(now, None, "device reporting again"))
        elif last_will is not None and rule.on_last_will:
            # Will and return in one batch (a late flush, a replayed session): the
            # episode happened; record it, started at the will, ended at the return.
            back = min(ts for ts in data_ts if ts > last_will.ts)
            msg = f"{rule.name or rule.rule_id}: Last Will received (device offline)"
            actions.append(Fire(last_will.ts, last_will.ts, rule.severity, None, None, None, msg))
            actions.append(Resolve(back, None, "device reporting again"))
    return Outcome(st, actions, no_data_due(rule, st))


def no_data_on_time(rule: NoDataRule, st: State, now: datetime) -> Outcome:
    """Open the offline episode when the device has been silent past its due time (or
    its Last Will arrived): started at its last message, or at the Last Will."""
    due = no_data_due(rule, st)
    if due is None or now < due:
        return Outcome(st, [], due)
    lwt = st.get("lwt")
    start = lwt if lwt is not None else st["seen"]
    st.update(active=True, start=start, sev=rule.severity, lwt=None)
    if lwt is not None:
        msg = f"{rule.name or rule.rule_id}: Last Will received (device offline)"
    else:
        silent_min = (ts_of(now) - st["seen"]) / 60
        msg = (
            f"{rule.name or rule.rule_id}: no data for {silent_min:.0f} min "
            f"(expected every {st.get('iv', 60)} s)"
        )
    action = Fire(dt_of(start), due, rule.severity, None, None, None, msg)
    return Outcome(st, [action], None)


VALUE_EVALUATORS: dict[str, Callable[[Any, State, Inputs, datetime], Outcome]] = {
    "threshold": _threshold,
    "cumulative": _cumulative,
    "rate": _rate,
    "stuck": _stuck,
    "sensor_fault": _sensor_fault,
    "no_data": _no_data,
}


def evaluate(rule: RuleBase, state: State, inputs: Inputs, now: datetime) -> Outcome:
    """Feed one batch's inputs for one subject through `rule`. `state` is updated in place
    and returned in the outcome; a rule kind with no stream input returns it unchanged."""
    from alerts import waste

    kind: str = getattr(rule, "kind", "")
    bag: dict[str, Callable[[Any, State, Inputs, datetime], Outcome]] = {
        "waste_storage": waste.storage,
        "waste_weight": waste.weight,
        "waste_unsealed": waste.unsealed,
        "waste_not_stored": waste.not_stored,
    }
    fn = VALUE_EVALUATORS.get(kind) or bag.get(kind)
    if fn is None:
        return Outcome(state)
    return fn(rule, state, inputs, now)


def on_time(rule: RuleBase, state: State, now: datetime) -> Outcome:
    """The time-driven half: called when a state's due time has passed."""
    from alerts import waste

    timed: dict[str, Callable[[Any, State, datetime], Outcome]] = {
        "no_data": no_data_on_time,
        "waste_storage": waste.storage_on_time,
        "waste_unsealed": waste.unsealed_on_time,
        "waste_not_stored": waste.not_stored_on_time,
    }
    fn = timed.get(getattr(rule, "kind", ""))
    if fn is None:
        return Outcome(state)
    return fn(rule, state, now)
