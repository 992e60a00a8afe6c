"""`healthmon keys ...` and `healthmon users create`: the printed key works, only hashes
are stored; the app refuses to start on a database it cannot use."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import psycopg
import pytest
from asgi_lifespan import LifespanManager

from api import create_app
from healthmon.cli import main
from ingest import SchemaError
from tests.test_api_support import ApiEnv, api_env, assert_problem, settings_for

__all__ = ["api_env"]


@pytest.fixture
def env_db(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HEALTHMON_DATABASE_URL", pg_dsn)
    return pg_dsn


def test_keys_create_prints_a_key_once_and_stores_its_hash(
    env_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--role", "operator", "--region", "r-cli"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("hm_")
    key_id = key.split("_")[1]
    with psycopg.connect(env_db) as conn:
        row = conn.execute(
            "SELECT secret_hash, role, regions FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert row is not None and key not in row[0]
    assert row[1:] == ("operator", ["r-cli"])
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and key not in listed
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", key_id]) == 1


async def test_a_created_key_authenticates_until_revoked(
    api_env: ApiEnv, env_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["keys", "create", "--role", "viewer"]) == 0
    key = capsys.readouterr().out.strip()
    async with api_env.client(key) as c:
        assert (await c.get("/api/v1/me")).json()["role"] == "viewer"
    assert await asyncio.to_thread(main, ["keys", "revoke", key.split("_")[1]]) == 0
    async with api_env.client(key) as c:
        assert_problem(await c.get("/api/v1/me"), 401)


async def test_users_create_reads_the_password_from_stdin(
    api_env: ApiEnv, env_db: str, monkeypatch: pytest.MonkeyPatch, uid: Callable[[str], str]
) -> None:
    name = uid("officer")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert (
        await asyncio.to_thread(
            main, ["users", "create", name, "--role", "viewer", "--password-stdin"]
        )
        == 0
    )
    with psycopg.connect(env_db) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = %s", (name,))
        stored = row.fetchone()
    assert stored is not None and stored[0].startswith("$argon2id$")
    async with api_env.client() as c:
        resp = await c.post(
            "/api/v1/login", json={"username": name, "password": "a long enough password"}
        )
        assert resp.json()["role"] == "viewer"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert (
        await asyncio.to_thread(
            main, ["users", "create", name, "--role", "viewer", "--password-stdin"]
        )
        == 1
    )


async def test_app_refuses_to_start_on_an_unmigrated_database(pg_dsn: str) -> None:
    base, _, _ = pg_dsn.rpartition("/")
    app = create_app(settings_for(f"{base}/postgres"))
    with pytest.raises(SchemaError):
        async with LifespanManager(app):
            pass
    app = create_app(settings_for("postgresql://nobody@127.0.0.1:1/none"))
    with pytest.raises(SchemaError, match="cannot connect"):
        async with LifespanManager(app):
            pass
