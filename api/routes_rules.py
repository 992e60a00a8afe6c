"""Alert rules (admin changes them; the running engine reloads on NOTIFY healthmon_rules),
silences (operators set maintenance windows) and rejected messages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

import alerts
from api import store
from api.auth import Admin, Operator, Principal, Viewer, check_region
from api.models import (
    Page,
    Rejected,
    Rule,
    RuleCreate,
    RuleReplace,
    Silence,
    SilenceCreate,
)
from api.pagination import decode_cursor, encode_cursor
from api.problems import PROBLEM_RESPONSES, ApiError, InvalidParam, invalid, not_found

router = APIRouter(prefix="/api/v1", responses=PROBLEM_RESPONSES)

RuleIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
SilenceIdPath = Annotated[
    str,
    Path(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
]


# --- rules --------------------------------------------------------------------------------


def _validated_body(
    rule_id: str, body: dict[str, Any], region: str | None
) -> tuple[dict[str, Any], str | None]:
    """The body checked by the alert engine's own model; the rule's region (column)."""
    body = {**body}
    if body.setdefault("rule_id", rule_id) != rule_id:
        raise invalid("body.body.rule_id", f"must equal the rule's id {rule_id}")
    scope = body.get("scope")
    scope_region = scope.get("region") if isinstance(scope, dict) else None
    if region is not None and scope_region is not None and region != scope_region:
        raise invalid("body.region", "differs from body.scope.region")
    try:
        model = alerts.parse_rule(body)
    except ValidationError as exc:
        params = [
            InvalidParam(
                name="body.body." + ".".join(str(p) for p in err["loc"]), reason=err["msg"]
            )
            for err in exc.errors()
        ]
        raise ApiError(
            422,
            "the rule body is invalid: " + "; ".join(f"{p.name}: {p.reason}" for p in params),
            kind="validation",
            invalid_params=params,
        ) from exc
    body = model.model_dump(mode="json", exclude_defaults=False)
    return body, region if region is not None else scope_region


def _check_rule_region(principal: Principal, region: str | None) -> None:
    if principal.regions and region is None:
        raise ApiError(
            403, "a region-limited key cannot change rules of every region", kind="forbidden"
        )
    check_region(principal, region, f"region {region}")


@router.get("/rules", response_model=Page[Rule], tags=["rules"])
async def list_rules(
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[Rule]:
    """Rules of the caller's regions and those that apply everywhere (region null)."""
    after = decode_cursor(cursor, (str,))
    async with request.app.state.pool.connection() as conn:
        rows = await store.list_rules(
            conn,
            regions=principal.region_filter(),
            after=after[0] if after else None,
            limit=limit,
        )
    nxt = encode_cursor(rows[-1]["rule_id"]) if len(rows) == limit else None
    return Page[Rule](items=[Rule(**r) for r in rows], next_cursor=nxt)


@router.post("/rules", response_model=Rule, status_code=201, tags=["rules"])
async def create_rule(body: RuleCreate, request: Request, principal: Admin) -> Rule:
    rule_body, region = _validated_body(body.rule_id, body.body, body.region)
    _check_rule_region(principal, region)
    async with request.app.state.pool.connection() as conn, conn.transaction():
        row = await store.insert_rule(conn, body.rule_id, rule_body, region, body.enabled)
    if row is None:
        raise ApiError(409, f"rule {body.rule_id} exists", kind="conflict")
    return Rule(**row)


@router.get("/rules/{rule_id}", response_model=Rule, tags=["rules"])
async def get_rule(rule_id: RuleIdPath, request: Request, principal: Viewer) -> Rule:
    async with request.app.state.pool.connection() as conn:
        row = await store.get_rule(conn, rule_id, principal.region_filter())
    if row is None:
        raise not_found("rule", rule_id)
    return Rule(**row)


@router.put("/rules/{rule_id}", response_model=Rule, tags=["rules"])
async def replace_rule(
    rule_id: RuleIdPath, body: RuleReplace, request: Request, principal: Admin
) -> Rule:
    """Replace the rule's body; the version goes up and the engine reloads."""
    rule_body, region = _validated_body(rule_id, body.body, body.region)
    _check_rule_region(principal, region)
    async with request.app.state.pool.connection() as conn, conn.transaction():
        old = await store.get_rule(conn, rule_id, principal.region_filter())
        if old is None:
            raise not_found("rule", rule_id)
        _check_rule_region(principal, old["region"])
        row = await store.replace_rule(conn, rule_id, rule_body, region, body.enabled)
    assert row is not None
    return Rule(**row)


@router.delete("/rules/{rule_id}", status_code=204, tags=["rules"])
async def delete_rule(rule_id: RuleIdPath, request: Request, principal: Admin) -> Response:
    async with request.app.state.pool.connection() as conn, conn.transaction():
        old = await store.get_rule(conn, rule_id, principal.region_filter())
        if old is None:
            raise not_found("rule", rule_id)
        _check_rule_region(principal, old["region"])
        await store.delete_rule(conn, rule_id)
    return Response(status_code=204)


# --- silences -----------------------------------------------------------------------------


@router.get("/silences", response_model=Page[Silence], tags=["silences"])
async def list_silences(
    request: Request,
    principal: Viewer,
    active: Annotated[bool, Query(description="only those in force now")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> Page[Silence]:
    state = request.app.state
    async with state.pool.connection() as conn:
        rows = await store.list_silences(
            conn,
            regions=principal.region_filter(),
            active_at=state.clock() if active else None,
            limit=limit,
        )
    return Page[Silence](items=[Silence(**{**r, "id": str(r["id"])}) for r in rows])


@router.post("/silences", response_model=Silence, status_code=201, tags=["silences"])
async def create_silence(body: SilenceCreate, request: Request, principal: Operator) -> Silence:
    """A maintenance window: notifications matching it are muted (alerts still recorded)."""
    state = request.app.state
    matchers = body.matchers.model_dump(exclude_none=True)
    if not matchers:
        raise invalid(
            "body.matchers", "name at least one of region, site_id, device_id, domain, rule_id"
        )
    starts_at = body.starts_at or state.clock()
    if body.ends_at <= starts_at:
        raise invalid("body.ends_at", "must be after starts_at")
    if principal.regions:
        if "region" not in matchers:
            raise invalid("body.matchers.region", "a region-limited key must name its region")
        check_region(principal, matchers["region"], f"region {matchers['region']}")
    async with state.pool.connection() as conn, conn.transaction():
        regions = principal.region_filter()
        if (
            regions is not None
            and "site_id" in matchers
            and await store.get_site(conn, matchers["site_id"], regions) is None
        ):
            raise invalid("body.matchers.site_id", "no such site within your regions")
        if (
            "device_id" in matchers
            and regions is not None
            and await store.get_device(conn, matchers["device_id"], regions) is None
        ):
            raise invalid("body.matchers.device_id", "no such device within your regions")
        row = await store.insert_silence(
            conn,
            {
                "matchers": matchers,
                "starts_at": starts_at,
                "ends_at": body.ends_at,
                "owner": principal.name,
                "reason": body.reason,
            },
        )
    return Silence(**{**row, "id": str(row["id"])})


@router.delete("/silences/{silence_id}", status_code=204, tags=["silences"])
async def delete_silence(
    silence_id: SilenceIdPath, request: Request, principal: Operator
) -> Response:
    async with request.app.state.pool.connection() as conn:
        if not await store.delete_silence(conn, silence_id, principal.region_filter()):
            raise not_found("silence", silence_id)
    return Response(status_code=204)


# --- rejected -----------------------------------------------------------------------------


@router.get("/rejected", response_model=Page[Rejected], tags=["rejected"])
async def list_rejected(
    request: Request,
    principal: Viewer,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(pattern=r"^[a-z_]{1,40}$")] = None,
    since: Annotated[datetime | None, Query(description="received at or after (RFC 3339)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[Rejected]:
    """Newest first. A region-limited key sees only rejections of its own devices."""
    if since is not None and since.tzinfo is None:
        raise invalid("query.since", "must be RFC 3339 with an offset")
    after = decode_cursor(cursor, (int,))
    async with request.app.state.pool.connection() as conn:
        rows = await store.list_rejected(
            conn,
            regions=principal.region_filter(),
            filters={"device_id": device_id, "reason": reason, "since": since},
            before_id=after[0] if after else None,
            limit=limit,
        )
    items = [
        Rejected(**{**r, "payload": bytes(r["payload"]).decode("utf-8", errors="replace")})
        for r in rows
    ]
    nxt = encode_cursor(rows[-1]["id"]) if len(rows) == limit else None
    return Page[Rejected](items=items, next_cursor=nxt)
