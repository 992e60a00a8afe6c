"""Pure notification decisions, all taking `now`: routing, silence matching, the
escalation/reminder schedule, grouping keys, retry backoff, and the outbox cursor.

Nothing here touches the database, the network or the clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal
from uuid import UUID

from alerts.notify.config import ContactGroup, Delivery, LadderStep, Matcher, Route

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
Purpose = Literal["fired", "reminder", "escalation", "severity_raised", "acknowledged", "resolved"]

# ---------------------------------------------------------------- matching


def matches(match: Matcher, labels: Mapping[str, str | None]) -> bool:
    """True when every key of `match` accepts the label of the same name.

    A value is a glob (`310*`) or a list of globs; a missing label matches nothing.
    `min_severity` compares severities. An empty matcher matches everything.
    """
    for key, want in match.items():
        if key == "min_severity":
            sev = labels.get("severity")
            if sev is None or SEVERITY_RANK.get(sev, -1) < SEVERITY_RANK[str(want)]:
                return False
            continue
        have = labels.get(key)
        if have is None:
            return False
        patterns = [want] if isinstance(want, str) else want
        if not any(fnmatchcase(have, p) for p in patterns):
            return False
    return True


def route_alert(routes: Sequence[Route], labels: Mapping[str, str | None]) -> list[Route]:
    """Routes for an alert, in order: the first match, then more while `continue` is set."""
    out: list[Route] = []
    for r in routes:
        if matches(r.match, labels):
            out.append(r)
            if not r.continue_matching:
                break
    return out


def step_targets(
    step: LadderStep, groups: Sequence[ContactGroup], labels: Mapping[str, str | None]
) -> list[ContactGroup]:
    """Contact groups of one ladder step: those named, plus those of its tier covering the alert."""
    out = [g for g in groups if g.id in step.groups]
    if step.tier:
        out += [
            g for g in groups if g.tier == step.tier and g not in out and matches(g.match, labels)
        ]
    return out


@dataclass(frozen=True, slots=True)
class SilenceView:
    id: UUID
    matchers: Matcher
    starts_at: datetime
    ends_at: datetime


def active_silence(
    silences: Iterable[SilenceView], labels: Mapping[str, str | None], now: datetime
) -> SilenceView | None:
    """The silence muting this alert at `now` (the one ending last), if any.

    A silence with no matchers mutes nothing: muting everything must be said explicitly
    (e.g. `{"region": "*"}`).
    """
    hits = [
        s
        for s in silences
        if s.matchers and s.starts_at <= now < s.ends_at and matches(s.matchers, labels)
    ]
    return max(hits, key=lambda s: s.ends_at) if hits else None


# ---------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one alert has gone along one route's ladder."""

    level: int = -1  # -1: nobody notified yet
    first_notified_at: datetime | None = None
    last_notified_at: datetime | None = None
    reminders: int = 0
    silenced_by: UUID | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    level: int
    purpose: Purpose


@dataclass(frozen=True, slots=True)
class Silenced:
    silence_id: UUID


@dataclass(frozen=True, slots=True)
class Done:
    pass


Action = Notify | Silenced | Done


def next_action(
    *,
    state: str,
    held_back: bool,
    progress: Progress,
    route: Route,
    silence: SilenceView | None,
    now: datetime,
) -> Action | None:
    """What to do now for one alert on one route, or None.

    Escalation delays count from the first notification, so a tier always gets its
    configured time to react, also after a silence or a notifier outage.
    """
    if state != "firing":
        return Done()
    if held_back:
        return None
    if silence is not None:
        return None if progress.silenced_by == silence.id else Silenced(silence.id)
    if progress.level < 0 or progress.first_notified_at is None:
        return Notify(0, "fired")
    nxt = progress.level + 1
    if nxt < len(route.ladder) and now >= progress.first_notified_at + timedelta(
        seconds=route.ladder[nxt].after_s
    ):
        return Notify(nxt, "escalation")
    if _reminder_due(progress, route, now):
        return Notify(progress.level, "reminder")
    return None


def _reminder_due(progress: Progress, route: Route, now: datetime) -> bool:
    if route.reminder_every_s is None or progress.last_notified_at is None:
        return False
    if route.max_reminders is not None and progress.reminders >= route.max_reminders:
        return False
    return now >= progress.last_notified_at + timedelta(seconds=route.reminder_every_s)


def next_due_at(progress: Progress, route: Route) -> datetime | None:
    """When `next_action` may next return something (for the service's sleep)."""
    if progress.first_notified_at is None:
        return None
    times: list[datetime] = []
    nxt = progress.level + 1
    if nxt < len(route.ladder):
        times.append(progress.first_notified_at + timedelta(seconds=route.ladder[nxt].after_s))
    if (
        route.reminder_every_s is not None
        and progress.last_notified_at is not None
        and (route.max_reminders is None or progress.reminders < route.max_reminders)
    ):
        times.append(progress.last_notified_at + timedelta(seconds=route.reminder_every_s))
    return min(times) if times else None


def applied(progress: Progress, action: Action, now: datetime) -> Progress:
    """The progress after `action` was queued at `now`."""
    if isinstance(action, Silenced):
        return Progress(
            progress.level,
            progress.first_notified_at,
            progress.last_notified_at,
            progress.reminders,
            action.silence_id,
        )
    if isinstance(action, Notify):
        return Progress(
            level=action.level,
            first_notified_at=progress.first_notified_at or now,
            last_notified_at=now,
            reminders=progress.reminders + (action.purpose == "reminder"),
            silenced_by=None,
        )
    return progress


# ---------------------------------------------------------------- grouping


def group_key(
    route_id: str | None, level: int, purpose: str, labels: Mapping[str, str | None]
) -> str:
    """Alerts of one site (else device) and one hazard (rule) on one rung share a message."""
    place = labels.get("site_id") or labels.get("device_id") or labels.get("alert_id") or ""
    return f"{route_id or '-'}|{level}|{purpose}|{place}|{labels.get('rule_id') or ''}"


def group_due_at(first_seen: datetime, route: Route | None, purpose: str) -> datetime:
    """First notifications wait `group_wait_s` for companions; follow-ups go at once."""
    wait = route.group_wait_s if (route is not None and purpose == "fired") else 0.0
    return first_seen + timedelta(seconds=wait)


# ---------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter; the one place retry delays come from."""

    base_s: float = 5.0
    cap_s: float = 300.0
    jitter: float = 0.5  # share of the delay that is random

    @classmethod
    def from_delivery(cls, d: Delivery) -> Backoff:
        return cls(base_s=d.backoff_base_s, cap_s=d.backoff_cap_s)

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number `attempt` (1 = after the first failure)."""
        full = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return full * (1 - self.jitter) + rng.uniform(0, full * self.jitter)


@dataclass(frozen=True, slots=True)
class Retry:
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    pass


def after_failure(
    *,
    attempts: int,
    max_attempts: int,
    retryable: bool,
    backoff: Backoff,
    rng: random.Random,
    now: datetime,
) -> Retry | GiveUp:
    """Retry later or give up, after `attempts` failed attempts."""
    if not retryable or attempts >= max_attempts:
        return GiveUp()
    return Retry(now + timedelta(seconds=backoff.delay_s(attempts, rng)))


# ---------------------------------------------------------------- the outbox cursor


@dataclass(frozen=True, slots=True)
class Cursor:
    """Events up to `last_id` are handled, plus `processed_above`; `gaps` maps a missing
    id to when it was first seen missing (an uncommitted or rolled-back insert)."""

    last_id: int = 0
    processed_above: frozenset[int] = frozenset()
    gaps: Mapping[int, datetime] = field(default_factory=dict)


def advance_cursor(
    cursor: Cursor, handled: Iterable[int], now: datetime, gap_grace_s: float
) -> Cursor:
    """Move the cursor over handled ids; a missing id holds it back for `gap_grace_s`.

    bigserial ids are taken at insert and committed in any order, so id 11 may be
    visible before id 10; skipping 10 for good would lose an alert. A gap older than the
    grace period is a rolled-back insert and is passed.
    """
    done = set(cursor.processed_above) | {i for i in handled if i > cursor.last_id}
    if not done:
        return Cursor(cursor.last_id, frozenset(), {})
    top = max(done)
    gaps = {i: cursor.gaps.get(i, now) for i in range(cursor.last_id + 1, top) if i not in done}
    last = cursor.last_id
    while last < top:
        n = last + 1
        if n in done or (n in gaps and (now - gaps[n]).total_seconds() >= gap_grace_s):
            last = n
            continue
        break
    return Cursor(
        last,
        frozenset(i for i in done if i > last),
        {i: t for i, t in gaps.items() if i > last},
    )
