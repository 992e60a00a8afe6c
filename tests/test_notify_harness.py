"""Shared pieces of the notification tests (no tests here): a per-test database cloned
from a migrated template, a local HTTP receiver standing in for webhooks and robots, a
local SMTP server, and helpers to raise alerts the way the engine does."""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from aiosmtpd.controller import Controller
from psycopg.rows import dict_row

from alerts.notify import Backoff, Notifier, parse_config, save_config
from ingest import migrate
from tests.conftest import PG_ADMIN_DSN, _dsn_for, free_port

T0 = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
OK = (200, {"errcode": 0, "errmsg": "ok"})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------- database


@pytest.fixture(scope="session")
def notify_template() -> Iterator[str]:
    """A migrated database used only as a template, so each test gets its own copy fast."""
    name = f"healthmon_test_ntpl_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}", returncode=3)
    import asyncio

    asyncio.run(migrate(_dsn_for(name), retention_days=14))
    yield name
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ndsn(notify_template: str) -> Iterator[str]:
    """A fresh database for one test: the notifier's configuration and cursor are global
    to a database, so tests sharing one would read each other's alerts."""
    name = f"healthmon_test_n_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{notify_template}"')
    yield _dsn_for(name)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def nconn(ndsn: str) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    async with await psycopg.AsyncConnection.connect(
        ndsn, autocommit=True, row_factory=dict_row
    ) as conn:
        yield conn


def notifier(dsn: str, **kw: Any) -> Notifier:
    """A notifier with tiny, deterministic backoff (1 s, 2 s, 4 s: no jitter)."""
    kw.setdefault("backoff", Backoff(base_s=1.0, cap_s=4.0, jitter=0.0))
    return Notifier(dsn=dsn, **kw)


async def load(conn: psycopg.AsyncConnection[Any], cfg: dict[str, Any]) -> None:
    await save_config(conn, parse_config(cfg), now=datetime.now(UTC))


async def raise_alert(
    conn: psycopg.AsyncConnection[Any],
    *,
    when: datetime = T0,
    rule_id: str = "coldchain.heat",
    site_id: str | None = "site-1",
    device_id: str | None = "fridge-1",
    region: str | None = "310115",
    domain: str | None = "coldchain",
    severity: str = "critical",
    kind: str = "value",
    value: float | None = 9.4,
) -> uuid.UUID:
    """Insert an alert and its `fired` event and NOTIFY, as the engine does."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO alerts (rule_id, subject, device_id, site_id, region, domain, metric,"
            " kind, severity, state, started_at, detected_at, value, threshold, message)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'temp_c', %s, %s, 'firing', %s, %s, %s, 8.0,"
            " '冷藏温度高于 8 °C') RETURNING id",
            (
                rule_id,
                f"device:{device_id}:{uuid.uuid4().hex[:6]}",
                device_id,
                site_id,
                region,
                domain,
                kind,
                severity,
                when,
                when,
                value,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        aid = row["id"] if isinstance(row, dict) else row[0]
        await conn.execute(
            "INSERT INTO alert_events (alert_id, at, kind, state, actor) VALUES (%s, %s, 'fired',"
            " 'firing', 'engine')",
            (aid, when),
        )
        await conn.execute("SELECT pg_notify('healthmon_alert_events', %s)", (str(aid),))
    return uuid.UUID(str(aid))


async def change_state(
    conn: psycopg.AsyncConnection[Any], aid: uuid.UUID, state: str, when: datetime
) -> None:
    """Acknowledge or resolve, as the engine does."""
    kind = {"acknowledged": "acknowledged", "resolved": "resolved"}[state]
    async with conn.transaction():
        await conn.execute(
            "UPDATE alerts SET state = %s, acknowledged_at = CASE WHEN %s = 'acknowledged'"
            " THEN %s ELSE acknowledged_at END, acknowledged_by = CASE WHEN %s = 'acknowledged'"
            " THEN 'duty-1' ELSE acknowledged_by END, resolved_at = CASE WHEN %s = 'resolved'"
            " THEN %s ELSE resolved_at END WHERE id = %s",
            (state, state, when, state, state, when, aid),
        )
        await conn.execute(
            "INSERT INTO alert_events (alert_id, at, kind, state, actor) VALUES (%s, %s, %s, %s,"
            " 'duty-1')",
            (aid, when, kind, state),
        )


async def rows(conn: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def timeline(conn: psycopg.AsyncConnection[Any], aid: uuid.UUID) -> list[str]:
    return [
        r["kind"]
        for r in await rows(
            conn, "SELECT kind FROM alert_events WHERE alert_id = %s ORDER BY id", aid
        )
    ]


# ---------------------------------------------------------------- HTTP receiver


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """Records every POST; answers from a per-path script, then 200 `{"errcode":0}`."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: tuple[int, Any]) -> None:
        with self.lock:
            self.scripts[path] = list(answers)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, req: Received) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(req)
            script = self.scripts.get(req.path)
            return script.pop(0) if script else OK


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    rec = HttpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = urlsplit(self.path)
            status, body = rec.answer(
                Received(parts.path, parse_qs(parts.query), dict(self.headers), json.loads(raw))
            )
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="test.http_receiver", daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(5)


# ---------------------------------------------------------------- SMTP server


@dataclass
class Mailbox:
    host: str
    port: int
    mails: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[Mailbox]:
    box = Mailbox("127.0.0.1", free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    yield box
    controller.stop()


def webhook_config(rec: HttpReceiver, **delivery: Any) -> dict[str, Any]:
    """One webhook channel `hook` -> group `duty` -> one catch-all route, no group wait."""
    return {
        "channels": [{"id": "hook", "type": "webhook", "url": rec.url("/hook")}],
        "contact_groups": [{"id": "duty", "tier": "duty", "channels": ["hook"]}],
        "routes": [{"id": "all", "ladder": [{"tier": "duty"}], "group_wait_s": 0}],
        "delivery": delivery,
    }
