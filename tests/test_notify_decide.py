"""The pure notification decisions, table-driven with explicit datetimes."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.notify.config import ContactGroup, LadderStep, Route, parse_config
from alerts.notify.decide import (
    Backoff,
    Cursor,
    Done,
    GiveUp,
    Notify,
    Progress,
    Retry,
    Silenced,
    SilenceView,
    active_silence,
    advance_cursor,
    after_failure,
    applied,
    group_due_at,
    group_key,
    matches,
    next_action,
    next_due_at,
    route_alert,
    step_targets,
)
from alerts.notify.errors import ConfigError
from alerts.notify.render import dingtalk_sign, mqtt_topic, render_message, wecom_body

T = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
LABELS = {
    "region": "310115",
    "site_id": "clinic-a",
    "device_id": "fridge-1",
    "domain": "coldchain",
    "rule_id": "coldchain.heat",
    "severity": "warning",
    "kind": "value",
}


def s(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"domain": "coldchain"}, True),
        ({"domain": "air"}, False),
        ({"domain": ["air", "coldchain"]}, True),
        ({"region": "3101*"}, True),
        ({"region": "4403*"}, False),
        ({"site_id": "clinic-a", "rule_id": "coldchain.*"}, True),
        ({"min_severity": "warning"}, True),
        ({"min_severity": "critical"}, False),
        ({"severity": "critical"}, False),
        ({"kind": "system"}, False),
    ],
)
def test_matches(match: dict[str, Any], expected: bool) -> None:
    assert matches(match, LABELS) is expected


def test_missing_label_matches_nothing_but_a_wildcard_needs_a_value() -> None:
    assert not matches({"site_id": "*"}, {**LABELS, "site_id": None})
    assert matches({"site_id": "*"}, LABELS)


def _route(rid: str, match: dict[str, Any], cont: bool = False, **kw: Any) -> Route:
    return Route.model_validate(
        {"id": rid, "match": match, "ladder": [{"tier": "duty"}], "continue": cont, **kw}
    )


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([_route("a", {"domain": "air"}), _route("b", {})], ["b"]),
        ([_route("a", {"domain": "coldchain"}), _route("b", {})], ["a"]),
        ([_route("a", {"domain": "coldchain"}, cont=True), _route("b", {})], ["a", "b"]),
        ([_route("a", {"min_severity": "critical"})], []),
    ],
)
def test_route_alert_first_match_unless_continue(routes: list[Route], expected: list[str]) -> None:
    assert [r.id for r in route_alert(routes, LABELS)] == expected


def test_step_targets_by_tier_and_scope_plus_named_groups() -> None:
    groups = [
        ContactGroup(id="a-duty", tier="duty", match={"site_id": "clinic-a"}),
        ContactGroup(id="b-duty", tier="duty", match={"site_id": "clinic-b"}),
        ContactGroup(id="a-head", tier="head", match={"site_id": "clinic-a"}),
        ContactGroup(id="district", tier="district", match={"region": "310115"}),
        ContactGroup(id="ops"),
    ]

    def ids(step: LadderStep) -> list[str]:
        return [g.id for g in step_targets(step, groups, LABELS)]

    assert ids(LadderStep(tier="duty")) == ["a-duty"]
    assert ids(LadderStep(tier="head", groups=["ops"])) == ["ops", "a-head"]
    assert ids(LadderStep(tier="district")) == ["district"]
    assert ids(LadderStep(tier="minister")) == []


SIL = uuid.uuid4()


@pytest.mark.parametrize(
    ("matchers", "start", "end", "now", "hit"),
    [
        ({"site_id": "clinic-a"}, -10, 10, 0, True),
        ({"site_id": "clinic-a"}, -10, 10, 10, False),  # ends_at is exclusive
        ({"site_id": "clinic-a"}, 5, 10, 0, False),  # not started
        ({"site_id": "clinic-b"}, -10, 10, 0, False),
        ({"domain": "coldchain", "rule_id": "coldchain.heat"}, -10, 10, 0, True),
        ({}, -10, 10, 0, False),  # no matchers mutes nothing
    ],
)
def test_active_silence(
    matchers: dict[str, Any], start: float, end: float, now: float, hit: bool
) -> None:
    sv = SilenceView(SIL, matchers, s(start), s(end))
    assert (active_silence([sv], LABELS, s(now)) is sv) is hit


LADDER = Route.model_validate(
    {
        "id": "r",
        "ladder": [
            {"tier": "duty"},
            {"tier": "head", "after_s": 600},
            {"tier": "district", "after_s": 1800},
        ],
        "reminder_every_s": 300,
        "max_reminders": 3,
    }
)
P0 = Progress(level=0, first_notified_at=s(0), last_notified_at=s(0))
SV = SilenceView(SIL, {"site_id": "clinic-a"}, s(-1), s(9999))


@pytest.mark.parametrize(
    ("state", "held", "progress", "silence", "now", "expected"),
    [
        ("firing", False, Progress(), None, 0, Notify(0, "fired")),
        ("acknowledged", False, P0, None, 900, Done()),
        ("resolved", False, Progress(), None, 0, Done()),
        ("firing", True, Progress(), None, 0, None),  # held back under a site alert
        ("firing", False, Progress(), SV, 0, Silenced(SIL)),
        ("firing", False, Progress(silenced_by=SIL), SV, 50, None),  # recorded once
        ("firing", False, P0, None, 299, None),
        ("firing", False, P0, None, 300, Notify(0, "reminder")),
        ("firing", False, P0, None, 600, Notify(1, "escalation")),  # escalation wins
        ("firing", False, Progress(1, s(0), s(600)), None, 899, None),
        ("firing", False, Progress(1, s(0), s(600)), None, 900, Notify(1, "reminder")),
        ("firing", False, Progress(1, s(0), s(600)), None, 1800, Notify(2, "escalation")),
        ("firing", False, Progress(2, s(0), s(1800), 3), None, 99999, None),  # reminders used up
        ("firing", False, Progress(2, s(0), s(1800), 2), None, 2100, Notify(2, "reminder")),
    ],
)
def test_next_action(
    state: str,
    held: bool,
    progress: Progress,
    silence: SilenceView | None,
    now: float,
    expected: object,
) -> None:
    got = next_action(
        state=state, held_back=held, progress=progress, route=LADDER, silence=silence, now=s(now)
    )
    assert got == expected


def test_applied_and_next_due() -> None:
    p = applied(Progress(), Notify(0, "fired"), s(10))
    assert p == Progress(0, s(10), s(10), 0, None)
    assert next_due_at(p, LADDER) == s(310)  # reminder before the head's 600 s
    p = applied(p, Notify(0, "reminder"), s(310))
    assert (p.reminders, p.first_notified_at, p.last_notified_at) == (1, s(10), s(310))
    assert next_due_at(p, LADDER) == s(610)
    assert applied(p, Silenced(SIL), s(400)).silenced_by == SIL
    assert next_due_at(Progress(), LADDER) is None


def test_grouping_key_and_wait() -> None:
    other_device = {**LABELS, "device_id": "fridge-2"}
    other_rule = {**LABELS, "rule_id": "coldchain.freeze"}
    assert group_key("r", 0, "fired", LABELS) == group_key("r", 0, "fired", other_device)
    assert group_key("r", 0, "fired", LABELS) != group_key("r", 0, "fired", other_rule)
    assert group_key("r", 0, "fired", LABELS) != group_key("r", 1, "escalation", LABELS)
    route = _route("r", {}, group_wait_s=30)
    assert group_due_at(s(0), route, "fired") == s(30)
    assert group_due_at(s(0), route, "resolved") == s(0)  # follow-ups do not wait


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (7, 30.0, 60.0), (30, 30.0, 60.0)],
)
def test_backoff_is_capped_exponential_with_jitter(attempt: int, low: float, high: float) -> None:
    b = Backoff(base_s=5, cap_s=60, jitter=0.5)
    rng = random.Random(7)
    delays = [b.delay_s(attempt, rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 2  # really jittered


@pytest.mark.parametrize(
    ("attempts", "retryable", "expected"),
    [(1, True, Retry(s(1))), (2, True, Retry(s(2))), (3, True, GiveUp()), (1, False, GiveUp())],
)
def test_after_failure(attempts: int, retryable: bool, expected: object) -> None:
    got = after_failure(
        attempts=attempts,
        max_attempts=3,
        retryable=retryable,
        backoff=Backoff(base_s=1, cap_s=60, jitter=0),
        rng=random.Random(1),
        now=s(0),
    )
    assert got == expected


@pytest.mark.parametrize(
    ("cursor", "handled", "now", "last", "above", "gaps"),
    [
        (Cursor(10), [11, 12, 13], 0, 13, set(), set()),
        (Cursor(10), [12, 13], 0, 10, {12, 13}, {11}),  # 11 not committed yet
        (Cursor(10, frozenset({12, 13}), {11: s(0)}), [11], 5, 13, set(), set()),
        (Cursor(10, frozenset({12, 13}), {11: s(0)}), [], 29, 10, {12, 13}, {11}),
        (Cursor(10, frozenset({12, 13}), {11: s(0)}), [], 30, 13, set(), set()),  # rolled back
        (Cursor(10), [], 0, 10, set(), set()),
        (Cursor(10), [14, 12], 0, 10, {12, 14}, {11, 13}),
    ],
)
def test_advance_cursor_waits_for_gaps_then_passes_them(
    cursor: Cursor, handled: list[int], now: float, last: int, above: set[int], gaps: set[int]
) -> None:
    got = advance_cursor(cursor, handled, s(now), gap_grace_s=30)
    assert (got.last_id, set(got.processed_above), set(got.gaps)) == (last, above, gaps)


def test_dingtalk_sign_matches_the_documented_algorithm() -> None:
    # Recomputed independently: base64(HMAC-SHA256(key=secret, "ts\nsecret")), URL-encoded.
    import base64
    import hashlib
    import hmac
    from urllib.parse import quote_plus

    secret, ts = "SECxyz", 1763870400000
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    assert dingtalk_sign(secret, ts) == quote_plus(base64.b64encode(digest).decode())


def test_rendering_groups_and_limits() -> None:
    alerts = [
        {
            "id": str(i),
            "rule_id": "pool.chlorine_low",
            "site_id": "pool-3",
            "region": "310115",
            "device_id": f"probe-{i}",
            "domain": "pool",
            "metric": "free_chlorine_mgl",
            "severity": "warning",
            "value": 0.2,
            "threshold": 0.3,
            "started_at": "2026-11-23T04:00:00+00:00",
            "message": "余氯低于 0.3 mg/L",
        }
        for i in range(25)
    ]
    msg = render_message(purpose="fired", level=0, alerts=alerts)
    assert msg.title == "【警告】告警（25 条） 游泳池水 pool-3"
    assert "另有 5 条未列出" in msg.text
    assert "2026-11-23 12:00:00" in msg.text  # China Standard Time
    big = render_message(purpose="fired", level=0, alerts=alerts * 20)
    assert (
        len(wecom_body(big, msgtype="markdown", at_members=False)["markdown"]["content"].encode())
        <= 4096
    )
    assert mqtt_topic(alerts[0]) == "hm/alerts/v1/pool/probe-0"
    assert (
        mqtt_topic({"domain": None, "device_id": None, "site_id": None})
        == "hm/alerts/v1/system/system"
    )


@pytest.mark.parametrize(
    ("cfg", "error"),
    [
        ({"channels": [{"id": "x", "type": "webhook"}]}, "needs `url`"),
        ({"channels": [{"id": "m", "type": "email", "host": "h"}]}, "needs `host` and `from`"),
        ({"contact_groups": [{"id": "g", "channels": ["nope"]}]}, "unknown channels"),
        ({"routes": [{"id": "r", "ladder": []}]}, "at least 1"),
        (
            {"routes": [{"id": "r", "match": {"colour": "red"}, "ladder": [{}]}]},
            "unknown match keys",
        ),
        (
            {"routes": [{"id": "r", "ladder": [{"after_s": 60}, {"after_s": 30}]}]},
            "must not decrease",
        ),
        (
            {"channels": [{"id": "a", "type": "webhook", "url": "u", "fallback": "b"}]},
            "unknown fallback",
        ),
        ({"delivery": {"max_attempts": 0}}, "max_attempts"),
    ],
)
def test_config_validation_names_the_problem(cfg: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(cfg)
