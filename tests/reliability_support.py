"""Shared pieces of the reliability tests: a Mosquitto of the test's own, restartable,
a publisher that retries until the broker acknowledges, and count helpers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, free_port
from tests.mqtt_helpers import scalar

TEMPLATE = ROOT / "deploy" / "mosquitto-test-persistent.conf"
# Recent event times (epoch ms); test retention is 60 days.
T0 = (int(time.time()) // 3600 - 48) * 3600 * 1000


class Broker:
    """A Mosquitto on a free port with persistence in `directory`; start/stop/restart."""

    def __init__(self, directory: Path, *, extra: str = "") -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        conf = TEMPLATE.read_text().replace("@PORT@", str(self.port))
        conf = conf.replace("@DIR@", str(directory)).replace("@EXTRA@", extra)
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(self.address, 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"test broker did not start on {self.port}")

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence database on the way out."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class RetryingPublisher:
    """QoS 1 publisher that retries a message until the broker acknowledges it.

    A retry may deliver a message twice; readings are keyed by (device, metric, ts),
    so the expected stored count stays exact.
    """

    def __init__(self, host: str, port: int) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-rpub-{uuid.uuid4().hex[:8]}"
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async(host, port)
        self.client.loop_start()
        self.sent = 0

    def publish(self, topic: str, payload: Any, timeout_s: float = 60.0) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.client.is_connected():
                time.sleep(0.05)
                continue
            info = self.client.publish(topic, body, qos=1)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                time.sleep(0.05)
                continue
            if info.is_published():
                self.sent += 1
                return
        raise TimeoutError(f"could not publish to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stream(
    pub: RetryingPublisher, messages: list[tuple[str, Any]], pace_s: float = 0.0
) -> threading.Thread:
    """Publish in a background thread; `.join()` when done."""

    def run() -> None:
        for i, (topic, body) in enumerate(messages):
            pub.publish(topic, body)
            if pace_s and i % 20 == 0:
                time.sleep(pace_s)

    t = threading.Thread(target=run, daemon=True, name="test.publisher")
    t.start()
    return t


async def readings_of(dsn: str, prefix: str) -> int:
    return int(
        await scalar(dsn, "SELECT count(*) FROM readings WHERE device_id LIKE %s", (prefix + "%",))
    )


async def duplicates_of(dsn: str, prefix: str) -> int:
    return int(
        await scalar(
            dsn,
            "SELECT count(*) FROM (SELECT 1 FROM readings WHERE device_id LIKE %s"
            " GROUP BY device_id, metric, ts HAVING count(*) > 1) d",
            (prefix + "%",),
        )
    )
