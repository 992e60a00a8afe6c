"""Plain-PostgreSQL partition upkeep: partitions created ahead, dropped for retention.

TimescaleDB does this itself (chunks and `add_retention_policy`); without it the
service keeps `readings` partitioned by event time in fixed-width ranges aligned
to the Unix epoch. The plan is a pure function of `now`; `ensure_partitions`
applies it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME_RE = re.compile(r"^readings_p(\d{8})$")


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    create: list[tuple[datetime, datetime]]
    drop: list[str]


def partition_name(lo: datetime) -> str:
    return f"readings_p{lo:%Y%m%d}"


def plan_partitions(
    existing: list[str],
    now: datetime,
    *,
    retention_days: int,
    width_days: int = 7,
    ahead: int = 4,
) -> PartitionPlan:
    """Which partitions to create and which to drop, at time `now`.

    A partition is dropped only when all of it is older than the retention horizon;
    partitions are wanted from the one holding the horizon up to `ahead` past `now`.
    """
    width = timedelta(days=width_days)
    horizon = now - timedelta(days=retention_days)

    def floor(t: datetime) -> datetime:
        return EPOCH + width * ((t - EPOCH) // width)

    wanted: list[tuple[datetime, datetime]] = []
    lo = floor(horizon)
    end = floor(now) + width * (ahead + 1)
    while lo < end:
        wanted.append((lo, lo + width))
        lo += width
    have = set(existing)
    create = [(a, b) for a, b in wanted if partition_name(a) not in have]
    drop = []
    for name in existing:
        m = _NAME_RE.match(name)
        if not m:
            continue
        start = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)
        if start + width <= horizon:
            drop.append(name)
    return PartitionPlan(create=create, drop=sorted(drop))


async def ensure_partitions(
    dsn: str,
    *,
    retention_days: int,
    width_days: int = 7,
    ahead: int = 4,
    now: datetime | None = None,
) -> PartitionPlan:
    """Create the partitions the plan wants and drop expired ones. Returns what it did."""
    now = now or datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass"
        )
        existing = [r[0] for r in await cur.fetchall()]
        plan = plan_partitions(
            existing, now, retention_days=retention_days, width_days=width_days, ahead=ahead
        )
        for lo, hi in plan.create:
            await _create_partition(conn, lo, hi)
        for name in plan.drop:
            logger.info("dropping expired partition %s", name)
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    if plan.create or plan.drop:
        logger.info("partitions: %d created, %d dropped", len(plan.create), len(plan.drop))
    return plan


async def _create_partition(conn: psycopg.AsyncConnection[Any], lo: datetime, hi: datetime) -> None:
    name = sql.Identifier(partition_name(lo))
    async with conn.transaction():
        # Rows that reached the default partition before this one existed move into it;
        # attaching would fail otherwise ("updated partition constraint for default
        # partition would be violated").
        await conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE readings INCLUDING DEFAULTS)").format(name)
        )
        await conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM readings_default WHERE ts >= %s AND ts < %s"
                " RETURNING *) INSERT INTO {} SELECT * FROM moved"
            ).format(name),
            (lo, hi),
        )
        await conn.execute(
            sql.SQL("ALTER TABLE readings ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                name, sql.Literal(lo), sql.Literal(hi)
            )
        )
