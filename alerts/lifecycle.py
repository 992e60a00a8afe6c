"""Alert lifecycle by hand: acknowledge (with a required note), resolve manually, and the
contract's alert object (section 5) for the API, the notifier and the MQTT alert topic.

firing -> acknowledged -> resolved; the engine resolves when the condition clears, a
person may resolve where the rule says `manual_resolve`. Every transition is appended to
the alert's timeline (`alert_events`), which is also the notification outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from alerts import store
from alerts.rules import parse_rule

CONTRACT_FIELDS = (
    "id", "rule_id", "device_id", "site_id", "region", "domain", "metric", "severity",
    "state", "started_at", "acknowledged_at", "acknowledged_by", "resolved_at", "value",
    "threshold", "message",
)  # fmt: skip
EXTRA_FIELDS = (
    "kind", "retrospective", "detected_at", "standard", "subject", "ack_note",
    "resolved_by", "suppressed_by",
)  # fmt: skip


class LifecycleError(Exception):
    """A transition that is not allowed; `alert_id` and `reason` say which and why."""

    def __init__(self, alert_id: UUID | str, reason: str) -> None:
        super().__init__(f"alert {alert_id}: {reason}")
        self.alert_id = str(alert_id)
        self.reason = reason


class NoteRequired(LifecycleError, ValueError):
    """Acknowledging (or resolving by hand) without a note."""


class ManualResolveNotAllowed(LifecycleError):
    """The alert's rule resolves only when its condition clears."""


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def alert_to_contract_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract section 5 alert object (RFC 3339 times) plus our extra fields
    (kind, retrospective, detected_at, standard, subject, ack_note, resolved_by,
    suppressed_by), from an `alerts` row as a mapping."""
    out: dict[str, Any] = {}
    for name in (*CONTRACT_FIELDS, *EXTRA_FIELDS):
        v = row.get(name)
        if isinstance(v, UUID):
            v = str(v)
        out[name] = _iso(v)
    return out


async def acknowledge(
    conn: store.Conn, alert_id: UUID | str, by: str, note: str, now: datetime
) -> dict[str, Any] | bool:
    """Acknowledge a firing alert. Raises NoteRequired when `note` is blank; returns
    False when the alert does not exist or is not firing, else the updated alert
    (contract dict). Runs in the caller's transaction."""
    if not note or not note.strip():
        raise NoteRequired(alert_id, "acknowledging needs a note")
    if not by or not by.strip():
        raise LifecycleError(alert_id, "acknowledging needs who")
    cur = await conn.execute(
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = %s, acknowledged_by = %s,"
        " ack_note = %s, updated_at = %s WHERE id = %s AND state = 'firing' RETURNING id",
        (now, by, note.strip(), now, alert_id),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await store.append_event(conn, row[0], "acknowledged", "acknowledged", now,
                             actor=by, note=note.strip())  # fmt: skip
    alert = await store.fetch_alert(conn, row[0])
    assert alert is not None
    return alert_to_contract_dict(alert)


async def resolve_manually(
    conn: store.Conn, alert_id: UUID | str, by: str, note: str, now: datetime
) -> dict[str, Any] | bool:
    """Resolve an open alert by hand, where its rule has `manual_resolve` (site and
    system alerts excepted: they follow their condition). Raises NoteRequired for a blank
    note and ManualResolveNotAllowed when the rule forbids it; returns False when the
    alert does not exist or is already resolved."""
    if not note or not note.strip():
        raise NoteRequired(alert_id, "resolving by hand needs a note")
    alert = await store.fetch_alert(conn, alert_id, lock=True)
    if alert is None or alert["state"] == "resolved":
        return False
    body = await store.rule_body(conn, alert["rule_id"])
    allowed = False
    if body is not None:
        try:
            allowed = parse_rule({**body, "rule_id": alert["rule_id"]}).manual_resolve
        except ValidationError:
            allowed = False
    if not allowed:
        raise ManualResolveNotAllowed(alert_id, f"rule {alert['rule_id']} does not allow it")
    await conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = greatest(%s, started_at),"
        " resolved_by = %s, updated_at = %s WHERE id = %s",
        (now, by, now, alert["id"]),
    )
    await store.append_event(conn, alert["id"], "resolved", "resolved", now,
                             actor=by, note=note.strip(), data={"manual": True})  # fmt: skip
    done = await store.fetch_alert(conn, alert["id"])
    assert done is not None
    return alert_to_contract_dict(done)
