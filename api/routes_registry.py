"""Sites and devices: the registry, and a device's latest values.

Reading needs `viewer`, changing needs `admin`. A region-limited caller sees only the
sites of its regions and the devices at them; anything else answers 404, as if absent.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from api import history, store
from api.auth import Admin, Principal, Viewer, check_region
from api.models import (
    Device,
    DeviceCreate,
    DeviceCreated,
    DeviceId,
    DeviceLatest,
    DevicePatch,
    Domain,
    LatestValue,
    LimitsOut,
    MqttCredentials,
    Page,
    Site,
    SiteCreate,
    SitePatch,
)
from api.pagination import decode_cursor, encode_cursor
from api.problems import PROBLEM_RESPONSES, ApiError, invalid, not_found
from api.provisioning import hash_device_password, new_device_password
from ingest import CATALOGUE

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["registry"], responses=PROBLEM_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str | None, Query(max_length=512, description="from `next_cursor`")]
SiteIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
DeviceIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _pool(request: Request) -> Any:
    return request.app.state.pool


# --- sites --------------------------------------------------------------------------------


@router.get("/sites", response_model=Page[Site])
async def list_sites(
    request: Request,
    principal: Viewer,
    region: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Site]:
    after = decode_cursor(cursor, (str,))
    async with _pool(request).connection() as conn:
        rows = await store.list_sites(
            conn,
            regions=principal.region_filter(),
            region=region,
            after=after[0] if after else None,
            limit=limit,
        )
    nxt = encode_cursor(rows[-1]["site_id"]) if len(rows) == limit else None
    return Page[Site](items=[Site(**r) for r in rows], next_cursor=nxt)


@router.post("/sites", response_model=Site, status_code=201)
async def create_site(body: SiteCreate, request: Request, principal: Admin) -> Site:
    check_region(principal, body.region, f"region {body.region}")
    async with _pool(request).connection() as conn:
        row = await store.insert_site(conn, body.model_dump())
    if row is None:
        raise ApiError(409, f"site {body.site_id} exists", kind="conflict")
    return Site(**row)


@router.get("/sites/{site_id}", response_model=Site)
async def get_site(site_id: SiteIdPath, request: Request, principal: Viewer) -> Site:
    async with _pool(request).connection() as conn:
        row = await store.get_site(conn, site_id, principal.region_filter())
    if row is None:
        raise not_found("site", site_id)
    return Site(**row)


@router.patch("/sites/{site_id}", response_model=Site)
async def patch_site(
    site_id: SiteIdPath, body: SitePatch, request: Request, principal: Admin
) -> Site:
    changes = body.model_dump(exclude_unset=True)
    if "region" in changes:
        if changes["region"] is None:
            raise invalid("body.region", "a site must have a region")
        check_region(principal, changes["region"], f"region {changes['region']}")
    for key in ("name", "kind", "address"):
        if key in changes and changes[key] is None:
            changes[key] = ""
    async with _pool(request).connection() as conn, conn.transaction():
        if await store.get_site(conn, site_id, principal.region_filter()) is None:
            raise not_found("site", site_id)
        row = await store.update_site(conn, site_id, changes)
    assert row is not None
    return Site(**row)


# --- devices ------------------------------------------------------------------------------


@router.get("/devices", response_model=Page[Device])
async def list_devices(
    request: Request,
    principal: Viewer,
    domain: Domain | None = None,
    site_id: Annotated[str | None, Query(max_length=64)] = None,
    region: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Device]:
    after = decode_cursor(cursor, (str,))
    async with _pool(request).connection() as conn:
        rows = await store.list_devices(
            conn,
            regions=principal.region_filter(),
            filters={"domain": domain, "site_id": site_id, "region": region, "online": online},
            after=after[0] if after else None,
            limit=limit,
        )
    nxt = encode_cursor(rows[-1]["device_id"]) if len(rows) == limit else None
    return Page[Device](items=[Device(**r) for r in rows], next_cursor=nxt)


async def _check_site(conn: Any, principal: Principal, site_id: str | None) -> None:
    """The device's site must exist and lie within the caller's regions."""
    if site_id is None:
        if principal.regions:
            raise invalid("body.site_id", "a region-limited key must place the device at a site")
        return
    if await store.get_site(conn, site_id, principal.region_filter()) is None:
        raise invalid("body.site_id", f"no site {site_id} (within your regions)")


@router.post("/devices", response_model=DeviceCreated, status_code=201)
async def create_device(body: DeviceCreate, request: Request, principal: Admin) -> DeviceCreated:
    """Register a device. The answer carries its MQTT password: the only time it is shown."""
    password = new_device_password()
    password_hash = hash_device_password(password)
    async with _pool(request).connection() as conn:
        async with conn.transaction():
            await _check_site(conn, principal, body.site_id)
            if not await store.insert_device(conn, body.model_dump(), password_hash):
                raise ApiError(409, f"device {body.device_id} exists", kind="conflict")
        row = await store.get_device(conn, body.device_id, None)
    assert row is not None
    provisioner = request.app.state.provisioner
    try:
        await provisioner.provision(
            device_id=body.device_id,
            domain=body.domain,
            password_hash=password_hash,
            password=password,
        )
        if not body.enabled:
            await provisioner.set_enabled(device_id=body.device_id, enabled=False)
    except Exception:
        logger.exception("broker provisioning failed for device %s", body.device_id)
    return DeviceCreated(
        **row,
        mqtt=MqttCredentials(
            username=body.device_id,
            password=password,
            topic_prefix=f"hm/v1/{body.domain}/{body.device_id}/",
        ),
    )


@router.get("/devices/{device_id}", response_model=Device)
async def get_device(device_id: DeviceIdPath, request: Request, principal: Viewer) -> Device:
    async with _pool(request).connection() as conn:
        row = await store.get_device(conn, device_id, principal.region_filter())
    if row is None:
        raise not_found("device", device_id)
    return Device(**row)


@router.patch("/devices/{device_id}", response_model=Device)
async def patch_device(
    device_id: DeviceIdPath, body: DevicePatch, request: Request, principal: Admin
) -> Device:
    changes = body.model_dump(exclude_unset=True)
    for key in ("profile", "name"):
        if key in changes and changes[key] is None:
            changes[key] = ""
    for key in ("expected_interval_s", "enabled"):
        if key in changes and changes[key] is None:
            raise invalid(f"body.{key}", "must not be null")
    async with _pool(request).connection() as conn:
        async with conn.transaction():
            if await store.get_device(conn, device_id, principal.region_filter()) is None:
                raise not_found("device", device_id)
            if "site_id" in changes:
                await _check_site(conn, principal, changes["site_id"])
            await store.update_device(conn, device_id, changes)
        row = await store.get_device(conn, device_id, None)
    assert row is not None
    if "enabled" in changes:
        try:
            await request.app.state.provisioner.set_enabled(
                device_id=device_id, enabled=changes["enabled"]
            )
        except Exception:
            logger.exception("broker enable/disable failed for device %s", device_id)
    return Device(**row)


@router.delete("/devices/{device_id}", status_code=204)
async def delete_device(device_id: DeviceIdPath, request: Request, principal: Admin) -> Response:
    """Remove the device from the registry. Its stored readings stay (retention applies)."""
    async with _pool(request).connection() as conn, conn.transaction():
        if await store.get_device(conn, device_id, principal.region_filter()) is None:
            raise not_found("device", device_id)
        await store.delete_device(conn, device_id)
    try:
        await request.app.state.provisioner.deprovision(device_id=device_id)
    except Exception:
        logger.exception("broker deprovisioning failed for device %s", device_id)
    return Response(status_code=204)


@router.get("/latest", response_model=Page[DeviceLatest])
async def latest_all(
    request: Request,
    principal: Viewer,
    domain: Domain | None = None,
    site_id: Annotated[str | None, Query(max_length=64)] = None,
    region: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="devices per page")] = 1000,
    cursor: Cursor = None,
) -> Page[DeviceLatest]:
    """Latest values of many devices at once (an extension, for dashboards): one page of
    devices with the newest value of each metric, in device id order."""
    after = decode_cursor(cursor, (str,))
    async with _pool(request).connection() as conn:
        devices = await store.list_devices(
            conn,
            regions=principal.region_filter(),
            filters={"domain": domain, "site_id": site_id, "region": region, "online": None},
            after=after[0] if after else None,
            limit=limit,
        )
        rows = await store.latest_for_devices(conn, [d["device_id"] for d in devices])
        index = await history.limits_index(conn)
    by_device: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_device.setdefault(r["device_id"], []).append(r)
    items = [_latest(d, by_device.get(d["device_id"], []), index) for d in devices]
    nxt = encode_cursor(devices[-1]["device_id"]) if len(devices) == limit else None
    return Page[DeviceLatest](items=items, next_cursor=nxt)


def _latest(
    device: dict[str, Any], rows: list[dict[str, Any]], index: history.LimitsIndex
) -> DeviceLatest:
    """A device's latest values with the unit and the rule limits of each metric."""
    units = CATALOGUE.get(device["domain"], {})
    metrics = []
    for r in rows:
        metrics.append(
            LatestValue(
                metric=r["metric"],
                ts=r["ts"],
                value=r["value"],
                received_at=r["received_at"],
                unit=units[r["metric"]].unit if r["metric"] in units else None,
                limits=LimitsOut.of(index.limits(device, r["metric"])),
            )
        )
    return DeviceLatest(
        device_id=device["device_id"],
        domain=device["domain"],
        online=device["online"],
        last_seen=device["last_seen"],
        status_changed_at=device["status_changed_at"],
        metrics=metrics,
    )


@router.get("/devices/{device_id}/latest", response_model=DeviceLatest)
async def device_latest(
    device_id: DeviceIdPath, request: Request, principal: Viewer
) -> DeviceLatest:
    """The newest value of each metric by event time, and the device's online state."""
    async with _pool(request).connection() as conn:
        device = await store.get_device(conn, device_id, principal.region_filter())
        if device is None:
            raise not_found("device", device_id)
        rows = await store.latest_readings(conn, device_id)
        index = await history.limits_index(conn)
    return _latest(device, rows, index)


__all__ = ["DeviceId", "router"]
