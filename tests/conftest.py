"""Shared fixtures: a throwaway database on the machine's PostgreSQL, the machine's
Mosquitto, and a TimescaleDB engine (PGlite + TimescaleDB in WASM) on a local port.

An unreachable service aborts the run with a clear message; it never turns into
skipped tests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ingest import migrate

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("HEALTHMON_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_HOST = os.environ.get("HEALTHMON_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("HEALTHMON_TEST_MQTT_PORT", "1883"))
PGLITE_DIR = ROOT / "deploy" / "pglite"
# Short retention keeps the plain-PostgreSQL partition set small in tests.
TEST_RETENTION_DAYS = 60


def _dsn_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{dbname}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A freshly migrated database `healthmon_test_<random>`, dropped at the end."""
    name = f"healthmon_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}", returncode=3)
    dsn = _dsn_for(name)
    asyncio.run(migrate(dsn, retention_days=TEST_RETENTION_DAYS))
    yield dsn
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """The machine's Mosquitto (default settings)."""
    if not _wait_port(MQTT_HOST, MQTT_PORT, 5):
        pytest.exit(f"Mosquitto is not reachable at {MQTT_HOST}:{MQTT_PORT}", returncode=3)
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique ids for per-test isolation: uid("fridge") -> "fridge-3f9a1c2b"."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def timescale_dsn() -> Iterator[str]:
    """A real TimescaleDB engine (PGlite + TimescaleDB 2.23 in WASM), freshly migrated.

    It takes one connection at a time and has no COPY FROM STDIN.
    """
    node = shutil.which("node")
    if node is None or not (PGLITE_DIR / "node_modules").exists():
        pytest.exit(
            "TimescaleDB test engine missing: run `npm ci --legacy-peer-deps` in deploy/pglite "
            "(the test command in the README does this)",
            returncode=3,
        )
    port = free_port()
    proc = subprocess.Popen(
        [node, "server.mjs", str(port)],
        cwd=PGLITE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        if not _wait_port("127.0.0.1", port, 60):
            proc.kill()
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.exit(f"TimescaleDB engine did not start: {out[-2000:]}", returncode=3)
        dsn = f"postgresql://postgres:x@127.0.0.1:{port}/postgres?sslmode=disable"
        asyncio.run(migrate(dsn, retention_days=TEST_RETENTION_DAYS))
        yield dsn
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
async def pg_conn(pg_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        yield conn
