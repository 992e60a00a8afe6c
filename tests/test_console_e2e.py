"""End to end: the duty console in headless Chromium against the real app and database.

The app runs under uvicorn in a thread on a free port, against the `pg_dsn` database. A
fridge warms: its readings are stored and the alert is raised the way the alert engine
raises it (an `alerts` row, its `fired` event in the `alert_events` outbox, NOTIFY), so
the test does not depend on rule timing. The last test takes no shortcut: `healthmon
serve` runs as a subprocess, a simulated fridge (an injected heat excursion) publishes
90 minutes of readings over MQTT, and the real alert engine raises `coldchain.heat`.
In each, the officer sees it appear live, acknowledges it with a note, and opens the
device's charts.

Chromium is Debian's (`apt-get install -y chromium fonts-wqy-microhei`), driven by
Playwright with `executable_path`; `playwright install` is never needed. Screenshots go
to test-artifacts/console/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from api import create_app
from healthmon.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = os.environ.get("HEALTHMON_TEST_CHROMIUM") or shutil.which("chromium") or ""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
]
ARTIFACTS = ROOT / "test-artifacts" / "console"
PASSWORD = "correct horse battery staple"
# How long a live change may take to reach the page: the stream is woken by NOTIFY, and
# polls every sse_poll_s (set short below) as a fallback.
LIVE_TIMEOUT_MS = 15_000


# --- fixtures -----------------------------------------------------------------------------


class AppServer:
    """The real app (API + console) under uvicorn in a thread; stoppable and restartable
    on the same port, as after a deploy or a crash."""

    def __init__(self, dsn: str, port: int) -> None:
        self.dsn = dsn
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        settings = Settings(database_url=self.dsn, session_secret="console-e2e-secret")
        app = create_app(settings, sse_poll_s=2.0, sse_heartbeat_s=5.0)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="console-e2e-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the app did not start under uvicorn")
            time.sleep(0.05)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._server = self._thread = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def console_url(pg_dsn: str) -> Iterator[str]:
    """The app shared by the tests that do not stop it."""
    server = AppServer(pg_dsn, _free_port())
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM or not Path(CHROMIUM).exists():
        pytest.exit(
            "Chromium not found: apt-get install -y chromium fonts-wqy-microhei "
            "(or set HEALTHMON_TEST_CHROMIUM)",
            returncode=3,
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Scene:
    """A site, a fridge with three hours of readings, and console users, all unique."""

    def __init__(self, dsn: str, uid: Callable[[str], str]) -> None:
        self.dsn = dsn
        self.region = uid("county")
        self.site_id = uid("clinic")
        self.device_id = uid("fridge")
        self.operator = uid("duty")
        self.viewer = uid("watch")
        self.now = datetime.now(UTC).replace(microsecond=0)

    def setup(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sites (site_id, name, kind, region) VALUES (%s, %s, 'clinic', %s)",
                (self.site_id, "城关镇预防接种门诊", self.region),
            )
            conn.execute(
                "INSERT INTO devices (device_id, domain, site_id, profile, name, online,"
                " status_changed_at, last_seen) VALUES (%s, 'coldchain', %s, 'vaccine_fridge',"
                " %s, true, %s, %s)",
                (self.device_id, self.site_id, "1 号疫苗冰箱", self.now, self.now),
            )
        self.store_readings(self.fridge_history())
        create_user(self.dsn, self.operator, "operator", self.region)

    def fridge_history(self) -> list[tuple[datetime, str, float]]:
        """Three hours at 4-5 °C, then the last 25 minutes warming past 8 °C to 9.5 °C."""
        rows: list[tuple[datetime, str, float]] = []
        start = self.now - timedelta(hours=3)
        for i in range(181):
            ts = start + timedelta(minutes=i)
            warm = max(0, i - 155)
            temp = 4.5 + 0.4 * ((i % 20) / 20) + warm * 0.2
            rows.append((ts, "temp_c", round(temp, 2)))
            rows.append((ts, "door_open", 1.0 if 150 <= i < 158 else 0.0))
        return rows

    def store_readings(self, rows: list[tuple[datetime, str, float]]) -> None:
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO readings (ts, device_id, metric, value, received_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(ts, self.device_id, m, v, ts) for ts, m, v in rows],
            )
            latest: dict[str, tuple[datetime, float]] = {}
            for ts, m, v in rows:
                if m not in latest or ts > latest[m][0]:
                    latest[m] = (ts, v)
            cur.executemany(
                "INSERT INTO latest_readings (device_id, metric, ts, value, received_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id, metric) DO UPDATE"
                " SET ts = EXCLUDED.ts, value = EXCLUDED.value, received_at = EXCLUDED.received_at"
                " WHERE latest_readings.ts < EXCLUDED.ts",
                [(self.device_id, m, ts, v, ts) for m, (ts, v) in latest.items()],
            )

    def raise_alert(self, threshold: float = 8.0) -> str:
        """What the alert engine does when the fridge has gone above 8 °C: the episode
        starts at the first reading over the limit and carries the latest value."""
        alert_id = str(uuid.uuid4())
        temps = [(ts, v) for ts, m, v in self.fridge_history() if m == "temp_c"]
        started = next(ts for ts, v in temps if v > threshold)
        value = temps[-1][1]
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO alerts (id, rule_id, subject, device_id, site_id, region, domain,"
                " metric, kind, severity, state, started_at, detected_at, value, threshold,"
                " message, standard) VALUES (%s, 'coldchain.heat', %s, %s, %s, %s, 'coldchain',"
                " 'temp_c', 'value', 'critical', 'firing', %s, %s, %s, %s, %s, %s)",
                (
                    alert_id,
                    f"device:{self.device_id}",
                    self.device_id,
                    self.site_id,
                    self.region,
                    started,
                    datetime.now(UTC),
                    value,
                    threshold,
                    f"冷藏温度 {value} °C 高于 {threshold} °C",
                    "疫苗储存和运输管理规范 2-8 °C",
                ),
            )
            conn.execute(
                "INSERT INTO alert_events (alert_id, at, kind, state, data)"
                " VALUES (%s, now(), 'fired', 'firing', '{}'::jsonb)",
                (alert_id,),
            )
            conn.execute("NOTIFY healthmon_alert_events")
        return alert_id

    def resolve_alert(self, alert_id: str) -> None:
        """What the alert engine does when the condition clears."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = now(), updated_at = now()"
                " WHERE id = %s",
                (alert_id,),
            )
            conn.execute(
                "INSERT INTO alert_events (alert_id, at, kind, state, data)"
                " VALUES (%s, now(), 'resolved', 'resolved', '{}'::jsonb)",
                (alert_id,),
            )
            conn.execute("NOTIFY healthmon_alert_events")

    def alert_row(self, alert_id: str) -> dict[str, Any]:
        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute(
                "SELECT state, acknowledged_by, ack_note FROM alerts WHERE id = %s", (alert_id,)
            )
            row = cur.fetchone()
        assert row is not None
        return {"state": row[0], "acknowledged_by": row[1], "ack_note": row[2]}


def create_user(dsn: str, name: str, role: str, region: str) -> None:
    """`healthmon users create` as an administrator would run it."""
    env = {**os.environ, "HEALTHMON_DATABASE_URL": dsn}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "healthmon.cli",
            "users",
            "create",
            name,
            "--role",
            role,
            "--region",
            region,
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and "invalid choice: 'users'" in proc.stderr:
        # The command is not wired into the CLI (yet): store the user as it would.
        from api.auth import hash_password

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO users (username, password_hash, role, regions)"
                " VALUES (%s, %s, %s, %s)",
                (name, hash_password(PASSWORD), role, [region]),
            )
        return
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.fixture
def scene(pg_dsn: str, uid: Callable[[str], str]) -> Scene:
    s = Scene(pg_dsn, uid)
    s.setup()
    return s


class Session:
    """One browser context (its own cookies) with screenshots and page errors collected."""

    def __init__(self, browser: Browser, base_url: str, prefix: str) -> None:
        self.context = browser.new_context(
            base_url=base_url,
            viewport={"width": 1400, "height": 900},
            locale="zh-CN",
            timezone_id="Asia/Shanghai",
        )
        self.context.grant_permissions(["notifications"], origin=base_url)
        self.page: Page = self.context.new_page()
        self.prefix = prefix
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        # Console errors other than HTTP statuses (a 401 before sign-in is expected), e.g.
        # a Content-Security-Policy violation or a module that failed to load.
        self.page.on(
            "console",
            lambda msg: (
                self.errors.append(msg.text)
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )

    def shot(self, name: str, *, full_page: bool = False) -> None:
        self.page.screenshot(path=ARTIFACTS / f"{self.prefix}-{name}.png", full_page=full_page)

    def login(self, username: str) -> None:
        page = self.page
        page.goto("/")
        page.wait_for_selector("#login-form")
        page.fill("#login-username", username)
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("#stream-state[data-state=live]", timeout=LIVE_TIMEOUT_MS)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session_factory(
    browser: Browser, console_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Session]]:
    sessions: list[Session] = []
    failed_before = request.session.testsfailed

    def make(prefix: str, base_url: str | None = None) -> Session:
        s = Session(browser, base_url or console_url, prefix)
        sessions.append(s)
        return s

    yield make
    # The call phase's failure is counted before teardown runs: keep the page as it was.
    failed = request.session.testsfailed > failed_before
    for s in sessions:
        if failed:
            s.shot("failure", full_page=True)
        s.close()


# --- tests --------------------------------------------------------------------------------


def test_officer_sees_live_alert_acknowledges_it_and_opens_the_charts(
    scene: Scene, session_factory: Callable[..., Session]
) -> None:
    s = session_factory("operator")
    page = s.page

    # Sign in: Chinese by default; a wrong password is refused. The page allows nothing
    # but its own origin (it must work without the internet).
    response = page.goto("/")
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#login-form")
    assert page.inner_text("#login-submit") == "登录"
    s.shot("01-login")
    page.fill("#login-username", scene.operator)
    page.fill("#login-password", "wrong password")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:has-text('用户名或密码错误')")
    s.login(scene.operator)
    assert page.inner_text("#user-name") == scene.operator
    assert scene.region in page.inner_text("#user-regions")
    page.wait_for_selector("#board-empty")
    s.shot("02-board-empty")

    # The fridge warms: the alert appears without a reload, with sound and notification.
    alert_id = scene.raise_alert()
    row = f"tr.alert-row[data-alert-id='{alert_id}']"
    page.wait_for_selector(row, timeout=LIVE_TIMEOUT_MS)
    assert page.get_attribute(row, "data-state") == "firing"
    assert "9.5" in page.inner_text(f"{row} .value-cell")
    alarm = page.evaluate("window.healthmonAlarm")
    assert alarm["beeps"] >= 1
    assert alarm["notifications"] >= 1
    assert scene.device_id in alarm["last"]["body"]
    assert page.inner_text("#nav-alert-count") == "1"
    s.shot("03-board-live-alert")

    # Filters: another domain hides it, all domains shows it again.
    page.select_option("#filter-domain", "water")
    page.wait_for_selector("#board-empty")
    page.select_option("#filter-domain", "coldchain")
    page.wait_for_selector(row)

    # Acknowledge: the note is required.
    page.click(f"{row} .btn-ack")
    page.wait_for_selector("#ack-dialog[open]")
    page.click("#ack-submit")
    page.wait_for_selector("#ack-dialog .form-error:has-text('请填写处置说明')")
    note = "已电话通知门诊，冰箱门已关好，疫苗已转移到备用冰箱"
    page.fill("#ack-note", note)
    s.shot("04-ack-dialog")
    page.click("#ack-submit")
    page.wait_for_selector(f"{row}[data-state=acknowledged]", timeout=LIVE_TIMEOUT_MS)
    assert page.query_selector(f"{row} .btn-ack") is None
    assert scene.alert_row(alert_id) == {
        "state": "acknowledged",
        "acknowledged_by": scene.operator,
        "ack_note": note,
    }
    s.shot("05-board-acknowledged")

    # Alert detail: the timeline and the chart with the limit.
    page.click(f"{row} td.message")
    page.wait_for_selector("#alert-timeline tbody tr[data-kind=acknowledged]")
    timeline = page.inner_text("#alert-timeline")
    assert "触发" in timeline
    assert note in timeline
    page.wait_for_selector("#alert-chart canvas")
    assert "限值 8" in page.inner_text("#alert-chart")
    s.shot("06-alert-detail", full_page=True)

    # Devices: online, last values, the warm temperature marked out of limit.
    page.click("nav a[data-section=devices]")
    drow = f"tr.device-row[data-device-id='{scene.device_id}']"
    page.wait_for_selector(drow)
    assert "在线" in page.inner_text(f"{drow}")
    assert page.get_attribute(f"{drow} .chip[data-metric=temp_c]", "data-out") == "1"
    assert page.get_attribute(f"{drow} .chip[data-metric=door_open]", "data-out") == "0"
    s.shot("07-devices")

    # The device page: a chart per metric over a chosen range, and the CSV download.
    page.click(f"{drow} a")
    page.wait_for_selector(
        ".metric-chart[data-metric=temp_c] canvas, .chart[data-metric=temp_c] canvas"
    )
    page.click("button[data-range='6h']")
    page.wait_for_selector(".chart[data-metric=temp_c] canvas")
    assert "1m" in page.inner_text("#bucket-info")
    assert page.get_attribute("#device-values .chip[data-metric=temp_c]", "data-out") == "1"
    s.shot("08-device-charts", full_page=True)
    csv_href = page.get_attribute(".metric-chart:has(.chart[data-metric=temp_c]) .csv-link", "href")
    assert csv_href is not None and "format=csv" in csv_href
    res = page.request.get(csv_href)
    assert res.status == 200
    body = res.text()
    assert body.count("\n") > 100
    assert "9.5" in body

    # English on request, remembered across a reload.
    page.click("#lang-switch")
    page.wait_for_selector("nav a[data-section=devices]:has-text('Devices')")
    page.reload()
    page.wait_for_selector(".chart[data-metric=temp_c] canvas")
    assert page.inner_text("#logout") == "Sign out"
    s.shot("09-device-english", full_page=True)
    page.click("#lang-switch")
    page.wait_for_selector("#logout:has-text('退出')")

    # The fridge cools down: the alert resolves, live on its page and on the board.
    page.goto(f"/#/alerts/{alert_id}")
    page.wait_for_selector("#detail-state .state-acknowledged")
    scene.resolve_alert(alert_id)
    page.wait_for_selector("#detail-state .state-resolved", timeout=LIVE_TIMEOUT_MS)
    page.wait_for_selector("#alert-timeline tbody tr[data-kind=resolved]")
    s.shot("10-alert-resolved", full_page=True)
    page.click("a.back")
    page.wait_for_selector("#board-empty")

    assert s.errors == []


def test_viewer_sees_alerts_but_cannot_acknowledge(
    scene: Scene, session_factory: Callable[..., Session]
) -> None:
    create_user(scene.dsn, scene.viewer, "viewer", scene.region)
    alert_id = scene.raise_alert()
    s = session_factory("viewer")
    s.login(scene.viewer)
    row = f"tr.alert-row[data-alert-id='{alert_id}']"
    s.page.wait_for_selector(row)
    assert s.page.query_selector(f"{row} .btn-ack") is None
    s.page.click(f"{row} td.message")
    s.page.wait_for_selector("#alert-timeline")
    assert s.page.query_selector("#detail-ack") is None
    s.shot("11-viewer-detail")

    # Signing out ends the session: the console returns to the sign-in form.
    s.page.click("#logout")
    s.page.wait_for_selector("#login-form")
    s.page.reload()
    s.page.wait_for_selector("#login-form")
    assert s.errors == []


def test_alert_raised_while_the_server_was_down_appears_after_it_returns(
    pg_dsn: str, scene: Scene, session_factory: Callable[..., Session]
) -> None:
    server = AppServer(pg_dsn, _free_port())
    server.start()
    try:
        s = session_factory("restart", server.url)
        s.login(scene.operator)
        s.page.wait_for_selector("#board-empty")

        server.stop()
        s.page.wait_for_selector("#stream-state[data-state=down]", timeout=LIVE_TIMEOUT_MS)
        s.page.wait_for_selector("#board-stale")
        alert_id = scene.raise_alert()
        s.shot("12-server-down")
        server.start()

        # The browser reconnects by itself (with Last-Event-ID) and the board catches up.
        s.page.wait_for_selector("#stream-state[data-state=live]", timeout=LIVE_TIMEOUT_MS)
        s.page.wait_for_selector(
            f"tr.alert-row[data-alert-id='{alert_id}']", timeout=LIVE_TIMEOUT_MS
        )
        assert s.page.query_selector("#board-stale") is None
        s.shot("13-server-back")
        assert s.errors == []
    finally:
        server.stop()


def test_page_helpers_choose_buckets_break_gaps_order_alerts_and_mark_limits(
    session_factory: Callable[..., Session],
) -> None:
    """The console's pure helpers, run in the browser as the page runs them."""
    s = session_factory("helpers")
    s.page.goto("/")
    s.page.wait_for_selector("#login-form")
    result = s.page.evaluate(
        """async () => {
        const chart = await import("/js/chart.js");
        const store = await import("/js/store.js");
        const devices = await import("/js/devices.js");
        const H = 3600;
        const order = [
            {id: "a", severity: "warning", state: "firing", started_at: "2026-11-23T10:00:00Z"},
            {id: "b", severity: "critical", state: "acknowledged",
             started_at: "2026-11-23T11:00:00Z"},
            {id: "c", severity: "critical", state: "firing", started_at: "2026-11-23T09:00:00Z"},
            {id: "d", severity: "critical", state: "firing",
             started_at: "2026-11-23T18:30:00+08:00"},
        ].sort(store.compareAlerts).map((a) => a.id);
        const alert = {metric: "temp_c", value: 9.4, threshold: 8};
        const low = {metric: "free_chlorine_mgl", value: 0.1, threshold: 0.3};
        const s = new store.AlertStore();
        s.apply({id: "x", state: "acknowledged", severity: "critical"}, {fromStream: false});
        const movedBack = s.apply({id: "x", state: "firing", severity: "critical"},
                                  {fromStream: true});
        s.apply({id: "x", state: "resolved", severity: "critical"}, {fromStream: true});
        return {
            buckets: [1, 6, 24, 7 * 24, 30 * 24, 365 * 24].map((h) => chart.chooseBucket(h * H)),
            gaps: chart.withGaps([[0, 1], [60, 2], [120, 3], [600, 4], [660, 5]], 60),
            order,
            limits: chart.limitLines(8, {low: 2, high: 8}),
            out: [
                devices.outOfLimit({metric: "temp_c", value: 8.5}, [alert]).out,
                devices.outOfLimit({metric: "temp_c", value: 7.5}, [alert]).out,
                devices.outOfLimit({metric: "free_chlorine_mgl", value: 0.2}, [low]).out,
                devices.outOfLimit({metric: "ph", value: 9.1, limits: {low: 6.5, high: 8.5}}, [])
                    .out,
                devices.outOfLimit({metric: "rh_pct", value: 50}, [alert]).out,
            ],
            movedBack,
            openAfterResolve: s.open.size,
        };
    }"""
    )
    assert result["buckets"] == [None, "1m", "5m", "15m", "1h", "1d"]
    # A bucket missing between 120 and 600 s is a gap (null), never a line across it.
    assert result["gaps"] == [[0, 60, 120, 360, 600, 660], [1, 2, 3, None, 4, 5]]
    # Most severe first, firing before acknowledged, then newest (10:30Z beats 09:00Z).
    assert result["order"] == ["d", "c", "b", "a"]
    assert result["limits"] == [8, 2]
    assert result["out"] == [True, False, True, True, False]
    assert result["movedBack"] is False
    assert result["openAfterResolve"] == 0
    assert s.errors == []


# --- the real path: a simulated fridge over MQTT, the real service raises the alert -------


class Service:
    """`healthmon serve` as a subprocess: intake + alert engine + notifier + API."""

    def __init__(self, dsn: str, uid: Callable[[str], str], broker: tuple[str, int]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / "real-path-service.log"
        env = {
            **os.environ,
            "HEALTHMON_DATABASE_URL": dsn,
            "HEALTHMON_MQTT_URL": f"mqtt://{broker[0]}:{broker[1]}",
            "HEALTHMON_MQTT_CLIENT_ID": uid("e2e-serve"),
            "HEALTHMON_MQTT_SESSION_EXPIRY_S": "120",
            "HEALTHMON_API_PORT": str(self.port),
            "HEALTHMON_SESSION_SECRET": "console-e2e-secret",
        }
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"healthmon serve exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=1) as res:
                    if b"healthmon_broker_connected 1" in res.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"healthmon serve not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def _wait_db(dsn: str, query: str, params: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, params).fetchone()
            if row is not None:
                return row[0]
            time.sleep(0.1)
    pytest.fail(f"{what} not seen within {timeout_s} s")


def test_simulated_fridge_warms_over_mqtt_and_the_real_service_raises_the_alert(
    pg_dsn: str,
    uid: Callable[[str], str],
    mqtt_broker: tuple[str, int],
    browser: Browser,
) -> None:
    """No shortcut: readings published over MQTT, stored by the intake, judged by the
    alert engine in the writer's transaction (coldchain.heat: > 8 °C for 30 min, event
    time), streamed to the board over SSE."""
    from dataclasses import replace

    from simulators import Injection, Message, MqttTransport, build_fleet, publish_sync
    from simulators.registry import register_fleet
    from tests.mqtt_helpers import Publisher

    now = time.time()
    region = uid("county")
    prefix = uid("e2e")
    fleet = build_fleet(
        "coldchain",
        1,
        seed=1,
        prefix=prefix,
        profile="fridge",
        injections=[
            Injection("excursion", now - 75 * 60, device=0, duration_s=3 * 3600, variant="heat")
        ],
    )
    fleet.sites = [replace(s, region=region) for s in fleet.sites]
    fleet.specs = [replace(s, region=region) for s in fleet.specs]
    register_fleet(pg_dsn, fleet)
    device_id = fleet.specs[0].device_id
    operator = uid("duty")
    create_user(pg_dsn, operator, "operator", region)

    service = Service(pg_dsn, uid, mqtt_broker)
    s: Session | None = None
    try:
        service.wait_ready()
        s = Session(browser, service.url, "real-path")
        s.login(operator)
        page = s.page
        page.wait_for_selector("#board-empty")

        # The intake's subscription is in place once a probe reading is stored (an old
        # event time, well before the excursion, so it does not touch the rule).
        probe_ts = datetime.fromtimestamp(now - 100 * 60, UTC).isoformat()
        pub = Publisher(*mqtt_broker, client_id=uid("e2e-probe"))
        try:
            deadline = time.monotonic() + 20
            topic = f"hm/v1/coldchain/{device_id}/telemetry"
            while True:
                pub.publish(topic, {"ts": probe_ts, "seq": 0, "values": {"temp_c": 5.0}})
                with psycopg.connect(pg_dsn, autocommit=True) as conn:
                    if conn.execute(
                        "SELECT 1 FROM readings WHERE device_id = %s", (device_id,)
                    ).fetchone():
                        break
                assert time.monotonic() < deadline, "the service never stored the probe"
                time.sleep(0.5)
        finally:
            pub.close()

        # The fridge warms: 90 minutes of simulated readings published as fast as the
        # broker takes them (no retained status, so the shared broker keeps no state).
        items = (
            m for m in fleet.run(now - 90 * 60, now) if isinstance(m, Message) and not m.retain
        )
        with MqttTransport(*mqtt_broker, connections=1, client_id_prefix=uid("e2e-sim")) as tr:
            stats = publish_sync(items, tr, speed=None)
        assert stats.messages >= 80

        alert_id = str(
            _wait_db(
                pg_dsn,
                "SELECT id FROM alerts WHERE device_id = %s AND rule_id = 'coldchain.heat'",
                (device_id,),
                20,
                "the coldchain.heat alert",
            )
        )
        row = f"tr.alert-row[data-alert-id='{alert_id}']"
        page.wait_for_selector(row, timeout=LIVE_TIMEOUT_MS)  # live: no reload
        assert page.get_attribute(row, "data-state") == "firing"
        s.shot("01-live-alert-from-mqtt")

        note = "冰箱温度超标，已转移疫苗"
        page.click(f"{row} .btn-ack")
        page.wait_for_selector("#ack-dialog[open]")
        page.fill("#ack-note", note)
        page.click("#ack-submit")
        page.wait_for_selector(f"{row}[data-state=acknowledged]", timeout=LIVE_TIMEOUT_MS)
        s.shot("02-acknowledged")
        with psycopg.connect(pg_dsn) as conn:
            state = conn.execute(
                "SELECT state, acknowledged_by, ack_note FROM alerts WHERE id = %s", (alert_id,)
            ).fetchone()
        assert state == ("acknowledged", operator, note)

        page.click("nav a[data-section=devices]")
        drow = f"tr.device-row[data-device-id='{device_id}']"
        page.wait_for_selector(drow)
        page.click(f"{drow} a")
        page.wait_for_selector(".chart[data-metric=temp_c] canvas")
        s.shot("03-device-chart", full_page=True)
        assert s.errors == []
    except BaseException:
        if s is not None:
            s.shot("failure", full_page=True)
        raise
    finally:
        if s is not None:
            s.close()
        service.stop()
