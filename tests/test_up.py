"""`healthmon up` on a machine with nothing configured: embedded PostgreSQL and broker,
simulated devices whose readings arrive at once, the API answering, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import psycopg

from tests.conftest import free_port
from tests.mqtt_helpers import wait_for


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _readings(pgdata: str) -> int:
    try:
        with psycopg.connect(
            f"postgresql://postgres@/healthmon?host={pgdata}", connect_timeout=2
        ) as conn:
            row = conn.execute("SELECT count(DISTINCT device_id) FROM readings").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


async def test_up_runs_the_whole_system_with_embedded_database_and_broker(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(HEALTHMON_API_PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path))
    data = tmp_path / "var"
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "healthmon.cli",
            "up",
            "--data-dir",
            str(data),
            "--devices",
            "6",
            "--interval-s",
            "1",
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout_s=90)
        text = (tmp_path / "up.log").read_text()
        assert "healthmon is up" in text
        assert "console login: admin / " in text
        # Simulated devices of several domains are reporting into the embedded database.
        await wait_for(lambda: _readings(str(data / "pgdata")) >= 4, timeout_s=60)
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in body.lower()
        status, body = _get(f"http://127.0.0.1:{port}/api/v1/devices")
        assert status == 401  # the API wants a key or a console session
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped cleanly" in (tmp_path / "up.log").read_text()
