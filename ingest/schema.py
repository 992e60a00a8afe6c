"""Versioned, re-runnable migrations, with TimescaleDB detected at migrate time.

Migration files live in `ingest/migrations/` as `NNNN_name.sql`; a file named
`NNNN_name.postgres.sql` or `NNNN_name.timescaledb.sql` is applied only on that
backend. Ranges: 0001-0009 ingest, 0010-0019 alerts, 0020-0029 api.
Each statement runs on its own in autocommit, because TimescaleDB's continuous
aggregates cannot be created inside a transaction block; every statement is
written to be re-runnable (IF NOT EXISTS, if_not_exists => true).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import psycopg

logger = logging.getLogger(__name__)

Backend = Literal["timescaledb", "postgres"]
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(postgres|timescaledb))?\.sql$")
# An arbitrary constant: serialises concurrent `migrate` runs (two workers starting at once).
_MIGRATE_LOCK = 7_421_001


class SchemaError(RuntimeError):
    """The database schema is missing or older than this code."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    backend: Backend | None
    text: str


def load_migrations() -> list[Migration]:
    """All migration files, in version order."""
    out: list[Migration] = []
    for entry in resources.files("ingest.migrations").iterdir():
        m = _FILE_RE.match(entry.name)
        if not m:
            continue
        backend = m.group(3)
        out.append(Migration(m.group(1), m.group(2), backend, entry.read_text("utf-8")))  # type: ignore[arg-type]
    out.sort(key=lambda mg: (mg.version, mg.backend or ""))
    return out


def split_statements(text: str) -> list[str]:
    """Split a migration file on `;` at the end of a line; comments are dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


async def detect_backend(conn: psycopg.AsyncConnection[Any], want: str = "auto") -> Backend:
    """The backend recorded at the first migration, else TimescaleDB when it can be enabled."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)"
    )
    cur = await conn.execute("SELECT value FROM meta WHERE key = 'backend'")
    row = await cur.fetchone()
    if row is not None:
        return row[0]  # type: ignore[no-any-return]
    if want == "postgres":
        return "postgres"
    cur = await conn.execute(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    available = (await cur.fetchone() or (0,))[0]
    if not available:
        if want == "timescaledb":
            raise SchemaError("HEALTHMON_STORAGE_BACKEND=timescaledb but the extension is missing")
        return "postgres"
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:  # available but not loadable (shared_preload_libraries)
        logger.warning("timescaledb is available but cannot be enabled: %s", exc)
        if want == "timescaledb":
            raise SchemaError(f"cannot enable timescaledb: {exc}") from exc
        return "postgres"
    return "timescaledb"


async def migrate(
    dsn: str,
    *,
    backend: str = "auto",
    retention_days: int = 1096,
    compress_after_days: int = 7,
) -> Backend:
    """Apply every pending migration; returns the backend in use. Safe to run again."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            chosen = await detect_backend(conn, backend)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('backend', %s) ON CONFLICT DO NOTHING",
                (chosen,),
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {r[0] for r in await cur.fetchall()}
            params = {
                "retention_days": int(retention_days),
                "compress_after_days": int(compress_after_days),
            }
            for mg in load_migrations():
                if mg.version in done or (mg.backend and mg.backend != chosen):
                    continue
                logger.info("applying migration %s_%s", mg.version, mg.name)
                for stmt in split_statements(mg.text):
                    # Only our own integers are substituted, never input.
                    for key, val in params.items():
                        stmt = stmt.replace("{" + key + "}", str(val))
                    await conn.execute(stmt.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (mg.version, mg.name),
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
    if chosen == "postgres":
        from ingest.partitions import ensure_partitions

        await ensure_partitions(dsn, retention_days=retention_days)
    return chosen


async def check_schema(conn: psycopg.AsyncConnection[Any]) -> Backend:
    """Raise SchemaError unless every migration has been applied; returns the backend."""
    try:
        cur = await conn.execute("SELECT value FROM meta WHERE key = 'backend'")
        row = await cur.fetchone()
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {r[0] for r in await cur.fetchall()}
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError("the database is not migrated: run `healthmon migrate`") from exc
    if row is None:
        raise SchemaError("the database is not migrated: run `healthmon migrate`")
    missing = sorted({m.version for m in load_migrations()} - done)
    if missing:
        raise SchemaError(f"migrations pending ({', '.join(missing)}): run `healthmon migrate`")
    return row[0]  # type: ignore[no-any-return]
