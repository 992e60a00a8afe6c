"""Pure evaluation of the medical-waste bag rules (subject "bag:<id>") and of site silence.

Bag rules follow one bag's events (`bag_sealed`, `bag_stored`, `bag_collected`) whatever
device reported them; the time limits are checked by `on_time` when the state's due time
passes (医疗废物管理条例 第十七条: temporary storage at most 2 days).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.actions import Action, Escalate, Fire, Inputs, Outcome, Resolve, State, dt_of, ts_of
from alerts.rules import (
    SEVERITY_RANK,
    WasteNotStoredRule,
    WasteStorageRule,
    WasteUnsealedRule,
    WasteWeightRule,
)


def _weight(attrs: dict[str, Any]) -> float | None:
    w = attrs.get("weight_kg")
    try:
        return None if w is None else float(w)
    except (TypeError, ValueError):
        return None


def _events(inp: Inputs) -> list[tuple[float, str, dict[str, Any]]]:
    return sorted(((ts_of(e.ts), e.type, e.attrs) for e in inp.events), key=lambda x: x[0])


# ---------------------------------------------------------------- storage time


def _storage_due(rule: WasteStorageRule, st: State) -> datetime | None:
    stored = st.get("stored")
    if stored is None or st.get("collected") is not None:
        return None
    if not st.get("active"):
        return dt_of(stored + rule.warn_s)
    if SEVERITY_RANK[st["sev"]] < SEVERITY_RANK[rule.limit_severity]:
        return dt_of(stored + rule.limit_s)
    return None


def _storage_fire(rule: WasteStorageRule, st: State, upto: float) -> list[Action]:
    """Open (and maybe escalate) as of `upto`, an event or wall-clock time."""
    stored = st["stored"]
    out: list[Action] = []
    if not st.get("active") and upto >= stored + rule.warn_s:
        start = stored + rule.warn_s
        st.update(active=True, start=start, sev=rule.severity)
        hours = (upto - stored) / 3600
        msg = (
            f"{rule.name or rule.rule_id}: bag stored {hours:.1f} h, not collected "
            f"(limit {rule.limit_s / 3600:.0f} h)"
        )
        out.append(
            Fire(
                dt_of(start),
                dt_of(start),
                rule.severity,
                round(hours, 2),
                rule.limit_s / 3600,
                None,
                msg,
            )
        )
    if (
        st.get("active")
        and upto >= stored + rule.limit_s
        and SEVERITY_RANK[st["sev"]] < SEVERITY_RANK[rule.limit_severity]
    ):
        st["sev"] = rule.limit_severity
        out.append(
            Escalate(
                dt_of(stored + rule.limit_s),
                rule.limit_severity,
                round((upto - stored) / 3600, 2),
                "storage limit reached",
            )
        )
    return out


def storage(rule: WasteStorageRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    for t, typ, _attrs in _events(inp):
        if typ == "bag_stored" and st.get("stored") is None:
            st["stored"] = t
        elif typ == "bag_collected" and st.get("collected") is None:
            st["collected"] = t
    collected = st.get("collected")
    if collected is not None and not st.get("done"):
        if st.get("stored") is not None:
            # collected after the warning time but nobody saw it: a retrospective episode
            actions += _storage_fire(rule, st, collected)
        if st.get("active"):
            hours = (collected - st["stored"]) / 3600 if st.get("stored") else None
            actions.append(Resolve(dt_of(collected), hours, "bag collected"))
            st["active"] = False
        st["done"] = True
    return Outcome(st, actions, _storage_due(rule, st))


def storage_on_time(rule: WasteStorageRule, st: State, now: datetime) -> Outcome:
    actions: list[Action] = []
    if st.get("stored") is not None and st.get("collected") is None:
        actions = _storage_fire(rule, st, ts_of(now))
    return Outcome(st, actions, _storage_due(rule, st))


# ---------------------------------------------------------------- weight at handover


def weight(rule: WasteWeightRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    for t, typ, attrs in _events(inp):
        w = _weight(attrs)
        if typ == "bag_sealed" and w is not None:
            st["sealed_w"], st["sealed_t"] = w, t
        elif typ == "bag_collected" and w is not None:
            st["coll_w"], st["coll_t"] = w, t
    sw, cw = st.get("sealed_w"), st.get("coll_w")
    if sw is not None and cw is not None and not st.get("checked"):
        st["checked"] = True
        tol = max(rule.tolerance_kg, sw * rule.tolerance_pct / 100)
        diff = cw - sw
        if abs(diff) > tol:
            st.update(active=True, start=st["coll_t"], sev=rule.severity)
            msg = (
                f"{rule.name or rule.rule_id}: sealed {sw:g} kg, collected {cw:g} kg "
                f"({diff:+.2f} kg, tolerance {tol:.2f} kg)"
            )
            at = dt_of(st["coll_t"])
            actions.append(
                Fire(
                    at,
                    dt_of(max(st["coll_t"], st["sealed_t"])),
                    rule.severity,
                    round(diff, 3),
                    round(tol, 3),
                    None,
                    msg,
                )
            )
    return Outcome(st, actions)


# ---------------------------------------------------------------- collected, never sealed


def unsealed(rule: WasteUnsealedRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    for t, typ, _attrs in _events(inp):
        if typ == "bag_sealed":
            st["sealed"] = True
        elif typ == "bag_collected" and st.get("collected") is None:
            st["collected"] = t
            st["due"] = max(t, ts_of(now)) + rule.grace_s
    if st.get("sealed") and st.get("active"):
        actions.append(Resolve(now, None, "seal record arrived"))
        st["active"] = False
    return Outcome(st, actions, _unsealed_due(st))


def _unsealed_due(st: State) -> datetime | None:
    if st.get("sealed") or st.get("active") or st.get("fired") or st.get("collected") is None:
        return None
    return dt_of(st["due"])


def unsealed_on_time(rule: WasteUnsealedRule, st: State, now: datetime) -> Outcome:
    due = _unsealed_due(st)
    if due is None or now < due:
        return Outcome(st, [], due)
    st.update(active=True, fired=True, start=st["collected"], sev=rule.severity)
    msg = f"{rule.name or rule.rule_id}: bag collected without a seal record"
    act = Fire(
        dt_of(st["collected"]),
        dt_of(st["collected"] + rule.grace_s),
        rule.severity,
        None,
        None,
        None,
        msg,
    )
    return Outcome(st, [act], None)


# ---------------------------------------------------------------- sealed, never stored


def not_stored(rule: WasteNotStoredRule, st: State, inp: Inputs, now: datetime) -> Outcome:
    actions: list[Action] = []
    for t, typ, _attrs in _events(inp):
        if typ == "bag_sealed" and st.get("sealed") is None:
            st["sealed"] = t
        elif typ in ("bag_stored", "bag_collected") and not st.get("done"):
            st["done"] = True
            if st.get("active"):
                actions.append(Resolve(dt_of(t), None, typ.removeprefix("bag_")))
                st["active"] = False
    return Outcome(st, actions, _not_stored_due(rule, st))


def _not_stored_due(rule: WasteNotStoredRule, st: State) -> datetime | None:
    if st.get("sealed") is None or st.get("done") or st.get("active") or st.get("fired"):
        return None
    return dt_of(st["sealed"] + rule.limit_s)


def not_stored_on_time(rule: WasteNotStoredRule, st: State, now: datetime) -> Outcome:
    due = _not_stored_due(rule, st)
    if due is None or now < due:
        return Outcome(st, [], due)
    st.update(active=True, fired=True, start=ts_of(due), sev=rule.severity)
    msg = (
        f"{rule.name or rule.rule_id}: bag sealed {(ts_of(now) - st['sealed']) / 3600:.1f} h ago, "
        "never stored or collected"
    )
    return Outcome(st, [Fire(due, due, rule.severity, None, None, None, msg)], None)


# ---------------------------------------------------------------- site silence


@dataclass(frozen=True, slots=True)
class Member:
    """One enabled device of a site, as the site-silence check sees it (epoch seconds)."""

    device_id: str
    seen: float | None  # last message received; None: never
    due: float | None  # when its no-data rule fires; None: already offline or never seen
    offline: bool  # its offline state is active
    interval_s: float = 60


def site_verdict(
    members: Sequence[Member], now: datetime, min_devices: int
) -> tuple[bool, set[str]]:
    """(the whole site is silent, devices whose new offline alert to hold back for now).

    A device that has just become due is held back while every sibling that is still
    up has been quiet since it fell silent (allowing one reporting interval): that may
    be one outage of the gateway, which the site alert will cover. The hold lasts at
    most until those siblings are due themselves, or one of them reports.
    """
    if len(members) < min_devices:
        return False, set()
    t = ts_of(now)

    def down(m: Member) -> bool:
        return m.offline or m.seen is None or (m.due is not None and t >= m.due)

    up = [m for m in members if not down(m)]
    if not up:
        return True, set()
    defer: set[str] = set()
    for m in members:
        if m.offline or m.seen is None or not down(m):
            continue
        seen = m.seen
        if all(o.seen is not None and o.seen <= seen + o.interval_s for o in up):
            defer.add(m.device_id)
    return False, defer
