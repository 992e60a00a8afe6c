"""Device identity at the broker: a Mosquitto started from deploy/mosquitto.conf (dynamic
security on, anonymous off, a TLS listener), provisioned through the API.

The broker runs on free ports with its own files in a temporary directory, bootstrapped
with deploy/dynsec-bootstrap.sh exactly as in production; the machine's broker on 1883
is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import queue
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from api import create_app
from api.broker_provisioning import (
    BrokerProvisioningError,
    DynsecProvisioner,
    provisioner_from_settings,
)
from healthmon.app import build_ingest
from healthmon.settings import Settings
from tests.conftest import ROOT, _wait_port, free_port
from tests.mqtt_helpers import wait_for
from tests.test_api_support import make_keys, settings_for

DEPLOY = ROOT / "deploy"
PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code "Not authorized"
WAIT_S = 5.0


@dataclass
class Broker:
    port: int
    tls_port: int
    ca_file: Path
    service: tuple[str, str]
    provisioner: tuple[str, str]
    dynsec_file: Path
    env: dict[str, str]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(certs: Path) -> None:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=healthmon-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=certs,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=certs,
    )  # fmt: skip
    (certs / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=certs,
    )  # fmt: skip


def broker_config(base: Path, *, port: int, tls_port: int) -> str:
    """deploy/mosquitto.conf with this machine's plugin path, our ports and directories."""
    plugin = next((p for p in PLUGIN_CANDIDATES if Path(p).exists()), None)
    if plugin is None:
        pytest.exit("Mosquitto's dynamic-security plugin is not installed", returncode=3)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = re.sub(r"(?m)^plugin /\S+$", f"plugin {plugin}", conf)
    conf = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", conf)
    conf = re.sub(r"(?m)^listener 8883$", f"listener {tls_port} 127.0.0.1", conf)
    conf = conf.replace("/mosquitto/", f"{base}/")
    # As root, Mosquitto drops to user `mosquitto`, which could not use our temp dir.
    return conf + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None:
        pytest.exit("mosquitto and mosquitto_ctrl are needed for the broker tests", returncode=3)
    base = tmp_path_factory.mktemp("mosquitto")
    (base / "data").mkdir()
    (base / "certs").mkdir()
    _make_certs(base / "certs")
    port, tls_port = free_port(), free_port()
    (base / "mosquitto.conf").write_text(broker_config(base, port=port, tls_port=tls_port))
    env = {
        **os.environ,
        "DYNSEC_ADMIN_USER": "admin",
        "DYNSEC_ADMIN_PASSWORD": uuid.uuid4().hex,
        "HEALTHMON_MQTT_USER": "healthmon",
        "HEALTHMON_MQTT_PASSWORD": uuid.uuid4().hex,
        "PROVISIONER_USER": "hm-provisioner",
        "PROVISIONER_PASSWORD": uuid.uuid4().hex,
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(port),
    }
    script = str(DEPLOY / "dynsec-bootstrap.sh")
    subprocess.run(
        ["sh", script, "init", str(base / "data" / "dynamic-security.json")],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    log = (base / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(base / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        if not (_wait_port("127.0.0.1", port, 10) and _wait_port("127.0.0.1", tls_port, 5)):
            pytest.exit(
                f"test Mosquitto did not start: {(base / 'mosquitto.log').read_text()[-2000:]}",
                returncode=3,
            )
        done = subprocess.run(["sh", script, "clients"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # Repeatable: a second run keeps what exists and still succeeds.
        again = subprocess.run(["sh", script, "clients"], env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        yield Broker(
            port=port,
            tls_port=tls_port,
            ca_file=base / "certs" / "ca.crt",
            service=(env["HEALTHMON_MQTT_USER"], env["HEALTHMON_MQTT_PASSWORD"]),
            provisioner=(env["PROVISIONER_USER"], env["PROVISIONER_PASSWORD"]),
            dynsec_file=base / "data" / "dynamic-security.json",
            env=env,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# --- a small blocking MQTT 5 client ----------------------------------------------------


class Client:
    """Connects at construction; `reason` is the CONNACK reason (None: no CONNACK)."""

    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        ca_file: Path | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.reason: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._connack = threading.Event()
        self._acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self._subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5,
        )
        if username is not None:
            c.username_pw_set(username, password)
        if ca_file is not None:
            c.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        c.on_publish = self._on_publish
        c.on_subscribe = lambda _c, _u, _m, reasons, _p: self._subacks.put(reasons)
        self.client = c
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self._connack.wait(WAIT_S)

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.reason = reason
        self._connack.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _r: ReasonCode, _p: Any) -> None:
        self.disconnected.set()
        self._connack.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """QoS 1; returns the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self._acks, WAIT_S), "no PUBACK"
            return int(self._acks[info.mid].value)

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.client.subscribe(topic, qos=1)
        return self._subacks.get(timeout=WAIT_S)

    def expect(self, topic: str) -> list[str]:
        """Wait for a message on `topic`; return the topics received before it."""
        before: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            got, _ = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == topic:
                return before
            before.append(got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """A factory of connected clients, all closed after the test."""
    made: list[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        made.append(Client(*args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def service(broker: Broker, clients: Callable[..., Client]) -> Client:
    """The ingest service's view: subscribed to every device topic."""
    c = clients(broker.port, *broker.service)
    assert c.accepted, c.reason
    assert not c.subscribe("hm/v1/+/+/+")[0].is_failure
    return c


# --- the API with the real provisioner -------------------------------------------------


@dataclass
class Api:
    app: FastAPI
    admin_key: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )


@pytest.fixture(scope="module")
async def api(pg_dsn: str, broker: Broker) -> AsyncIterator[Api]:
    user, password = broker.provisioner
    settings = settings_for(
        pg_dsn, broker_admin_url=f"mqtt://{user}:{password}@127.0.0.1:{broker.port}"
    )
    provisioner = provisioner_from_settings(settings)
    assert isinstance(provisioner, DynsecProvisioner)
    app = create_app(settings, provisioner=provisioner, listen_notifications=False)
    keys = await make_keys(pg_dsn, "test-region-broker")
    async with LifespanManager(app):
        yield Api(app, keys["admin"])


async def _create_device(api: Api, device_id: str, **extra: Any) -> str:
    async with api.client() as c:
        resp = await c.post(
            "/api/v1/devices", json={"device_id": device_id, "domain": "coldchain", **extra}
        )
    assert resp.status_code == 201, resp.text
    mqtt = resp.json()["mqtt"]
    assert mqtt["username"] == device_id
    return str(mqtt["password"])


# --- tests ------------------------------------------------------------------------------


async def test_device_publishes_on_its_own_topics_and_is_refused_on_another_devices(
    api: Api, broker: Broker, service: Client, clients: Callable[..., Client], uid: Any
) -> None:
    device_id, other_id = uid("fridge"), uid("fridge")
    password = await _create_device(api, device_id)
    dev = clients(broker.port, device_id, password)
    assert dev.accepted, dev.reason

    own = f"hm/v1/coldchain/{device_id}/telemetry"
    assert dev.publish(own, b'{"values": {"temp_c": 5.1}}') == 0
    service.expect(own)

    forged = f"hm/v1/coldchain/{other_id}/telemetry"
    assert dev.publish(forged, b'{"values": {"temp_c": 99}}') == NOT_AUTHORIZED
    assert dev.publish(f"hm/alerts/v1/coldchain/{device_id}") == NOT_AUTHORIZED
    # Same publisher, same connection: the marker arrives after anything sent before it.
    marker = f"hm/v1/coldchain/{device_id}/status"
    assert dev.publish(marker, b'{"online": true}') == 0
    assert forged not in service.expect(marker)
    # Nor may a device read others' data.
    assert dev.subscribe("hm/v1/#")[0].is_failure


async def test_wrong_password_and_anonymous_clients_are_refused_at_connect(
    api: Api, broker: Broker, clients: Callable[..., Client], uid: Any
) -> None:
    device_id = uid("air")
    await _create_device(api, device_id)
    wrong = clients(broker.port, device_id, "not-the-password")
    assert wrong.reason is not None and wrong.reason.is_failure
    unknown = clients(broker.port, uid("nobody"), "x")
    assert unknown.reason is not None and unknown.reason.is_failure
    anonymous = clients(broker.port)
    assert anonymous.reason is not None and anonymous.reason.is_failure
    anonymous_tls = clients(broker.tls_port, ca_file=broker.ca_file)
    assert anonymous_tls.reason is not None and anonymous_tls.reason.is_failure


async def test_the_broker_keeps_only_a_hash_of_the_device_password(
    api: Api, broker: Broker, uid: Any
) -> None:
    device_id = uid("fridge")
    password = await _create_device(api, device_id)
    clients_by_name = {
        c["username"]: c
        for c in json.loads(broker.dynsec_file.read_text())["clients"]  # saved on change
    }
    stored = clients_by_name[device_id]
    assert stored["roles"] == [{"rolename": f"hm-device-{device_id}"}]
    assert {"password", "salt", "iterations"} <= stored.keys()
    assert password not in broker.dynsec_file.read_text()


def test_bootstrap_fails_loudly_with_a_wrong_admin_password(broker: Broker) -> None:
    env = {**broker.env, "DYNSEC_ADMIN_PASSWORD": "wrong"}
    done = subprocess.run(
        ["sh", str(DEPLOY / "dynsec-bootstrap.sh"), "clients"],
        env=env, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode != 0
    assert "refuses admin" in done.stderr


async def test_deleting_a_device_disconnects_it_and_refuses_it(
    api: Api, broker: Broker, clients: Callable[..., Client], uid: Any
) -> None:
    device_id = uid("pool")
    password = await _create_device(api, device_id)
    dev = clients(broker.port, device_id, password)
    assert dev.accepted
    async with api.client() as c:
        assert (await c.delete(f"/api/v1/devices/{device_id}")).status_code == 204
    assert await asyncio.to_thread(dev.disconnected.wait, WAIT_S)
    dev.close()
    again = clients(broker.port, device_id, password)
    assert again.reason is not None and again.reason.is_failure


async def test_disabling_refuses_the_device_and_enabling_restores_it(
    api: Api, broker: Broker, service: Client, clients: Callable[..., Client], uid: Any
) -> None:
    device_id = uid("water")
    password = await _create_device(api, device_id)
    dev = clients(broker.port, device_id, password)
    assert dev.accepted
    async with api.client() as c:
        resp = await c.patch(f"/api/v1/devices/{device_id}", json={"enabled": False})
        assert resp.status_code == 200 and resp.json()["enabled"] is False
        assert await asyncio.to_thread(dev.disconnected.wait, WAIT_S)
        dev.close()
        refused = clients(broker.port, device_id, password)
        assert refused.reason is not None and refused.reason.is_failure

        resp = await c.patch(f"/api/v1/devices/{device_id}", json={"enabled": True})
        assert resp.status_code == 200 and resp.json()["enabled"] is True
    back = clients(broker.port, device_id, password)
    assert back.accepted, back.reason
    topic = f"hm/v1/water/{device_id}/telemetry"
    assert back.publish(topic) == 0
    service.expect(topic)


async def test_a_device_created_disabled_cannot_connect_until_enabled(
    api: Api, broker: Broker, clients: Callable[..., Client], uid: Any
) -> None:
    device_id = uid("waste")
    password = await _create_device(api, device_id, enabled=False)
    refused = clients(broker.port, device_id, password)
    assert refused.reason is not None and refused.reason.is_failure
    async with api.client() as c:
        resp = await c.patch(f"/api/v1/devices/{device_id}", json={"enabled": True})
        assert resp.status_code == 200
    assert clients(broker.port, device_id, password).accepted


async def test_tls_listener_accepts_a_device_that_trusts_the_ca(
    api: Api, broker: Broker, service: Client, clients: Callable[..., Client], uid: Any
) -> None:
    device_id = uid("coldbox")
    password = await _create_device(api, device_id)
    dev = clients(broker.tls_port, device_id, password, ca_file=broker.ca_file)
    assert dev.accepted, dev.reason
    topic = f"hm/v1/coldchain/{device_id}/telemetry"
    assert dev.publish(topic) == 0
    service.expect(topic)
    # A client that does not trust our CA fails the handshake.
    with pytest.raises(ssl.SSLError):
        clients(broker.tls_port, device_id, password, ca_file=Path(certifi_or_system()))


def certifi_or_system() -> str:
    """A CA bundle that does not contain the test CA."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("no system CA bundle to test an untrusted handshake with")


async def test_service_credentials_subscribe_shared_and_publish_alerts_only(
    broker: Broker, clients: Callable[..., Client], uid: Any
) -> None:
    svc = clients(broker.port, *broker.service)
    assert svc.accepted
    assert not svc.subscribe("$share/ingest/hm/v1/+/+/+")[0].is_failure
    # 0x10 "No matching subscribers" is success too.
    assert svc.publish(f"hm/alerts/v1/coldchain/{uid('fridge')}") in (0x00, 0x10)
    assert svc.publish(f"hm/v1/coldchain/{uid('fridge')}/telemetry") == NOT_AUTHORIZED


async def test_provisioning_again_resets_the_password_and_deprovisioning_is_repeatable(
    broker: Broker, clients: Callable[..., Client], uid: Any
) -> None:
    user, password = broker.provisioner
    prov = DynsecProvisioner(host="127.0.0.1", port=broker.port, username=user, password=password)
    device_id = uid("air")
    for pw in ("first-password", "second-password"):
        await prov.provision(device_id=device_id, domain="air", password_hash="", password=pw)
    old = clients(broker.port, device_id, "first-password")
    assert old.reason is not None and old.reason.is_failure
    assert clients(broker.port, device_id, "second-password").accepted
    await prov.deprovision(device_id=device_id)
    await prov.deprovision(device_id=device_id)


async def test_an_unreachable_broker_or_a_wrong_admin_raises_a_provisioning_error(
    broker: Broker,
) -> None:
    down = DynsecProvisioner(
        host="127.0.0.1", port=free_port(), username="x", password="y", timeout_s=2
    )
    with pytest.raises(BrokerProvisioningError, match="cannot reach"):
        await down.set_enabled(device_id="d", enabled=False)
    wrong = DynsecProvisioner(
        host="127.0.0.1", port=broker.port, username="hm-provisioner", password="y", timeout_s=2
    )
    with pytest.raises(BrokerProvisioningError, match="refused"):
        await wrong.deprovision(device_id="d")


def test_provisioner_is_configured_only_by_the_admin_url() -> None:
    dsn = "postgresql://localhost/unused"
    assert provisioner_from_settings(settings_for(dsn)) is None
    with pytest.raises(ValueError, match="username"):
        provisioner_from_settings(settings_for(dsn, broker_admin_url="mqtt://host:1883"))


async def test_the_intake_stores_what_a_device_sends_over_tls(
    api: Api, broker: Broker, pg_dsn: str, clients: Callable[..., Client], uid: Any
) -> None:
    """The service's intake on the TLS listener, verifying the broker with our CA and
    logging in with the service account: a burst of messages (read from the socket in
    large decrypted chunks) is stored once each."""
    device_id = uid("tls")
    password = await _create_device(api, device_id, profile="fridge")
    user, secret = broker.service
    pipeline = build_ingest(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=pg_dsn,
            mqtt_url=f"mqtts://{user}:{secret}@127.0.0.1:{broker.tls_port}",
            broker_ca_file=str(broker.ca_file),
            mqtt_client_id=uid("ingest-tls"),
            mqtt_session_expiry_s=60,
            retention_days=60,
            device_rate_limit_per_s=0,
        )
    )
    await pipeline.__aenter__()
    task = asyncio.create_task(pipeline.run())
    try:
        dev = clients(broker.tls_port, device_id, password, ca_file=broker.ca_file)
        assert dev.accepted, dev.reason
        t0 = int(time.time() // 60 * 60 - 3600) * 1000
        topic = f"hm/v1/coldchain/{device_id}/telemetry"
        for i in range(300):
            body = {"ts": t0 + i * 1000, "seq": i, "values": {"temp_c": 4 + i % 10 / 10}}
            assert dev.publish(topic, json.dumps(body).encode()) == 0
        sql = "SELECT count(*), count(DISTINCT seq) FROM readings WHERE device_id = %s"
        await wait_for(lambda: _row(pg_dsn, sql, device_id, (300, 300)), timeout_s=20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pipeline.__aexit__(None, None, None)


async def _row(dsn: str, sql: str, param: str, want: tuple[int, int]) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(sql, (param,))).fetchone() == want
