"""Device identity at the broker: Mosquitto's dynamic-security plugin, driven over MQTT.

The service connects as a dynsec admin client, publishes JSON commands on
`$CONTROL/dynamic-security/v1` and reads the answers from
`$CONTROL/dynamic-security/v1/response` (matched by `correlationData`, because every
admin subscribed there sees every answer). The only module of `api/` that imports paho.

Each device gets an MQTT client (username = device_id) and its own role
`hm-device-<device_id>` whose one ACL is `publishClientSend hm/v1/+/<device_id>/#`.
A per-device role, not one shared role with `%u`: the dynamic-security plugin of
Mosquitto 2.0 does not substitute `%u`/`%c` in ACL topics (checked against 2.0.11: the
pattern matches literally and the device's own topic is refused). Everything else is
denied by the plugin's `defaultACLAccess` (publishClientSend and subscribe: deny).

The clear password is handed to the plugin once in `createClient`; the plugin stores
its own salted PBKDF2-SHA512 hash and we keep none.

One short MQTT connection per call, not a long-lived session: provisioning happens a
few times a day, so there is nothing to keep alive, reconnect or close at shutdown,
and a broker outage costs exactly the calls made during it (logged by the API, and
repeatable: every operation here is idempotent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from healthmon.settings import Settings, parse_mqtt_url

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
ROLE_PREFIX = "hm-device-"

# Errors that mean "already in the state we want": they make every operation idempotent,
# so a call that failed half-way (broker restart) can simply be repeated.
_ALREADY = {
    "createRole": "Role already exists",
    "createClient": "Client already exists",
    "deleteClient": "Client not found",
    "deleteRole": "Role not found",
}

Command = dict[str, Any]


class BrokerProvisioningError(Exception):
    """A dynsec call failed: the broker was unreachable, refused us, or a command failed.

    Attributes:
        command: the failing dynsec command name, or None for a connection failure.
        device_id: the device concerned, when known.
    """

    def __init__(self, message: str, *, command: str | None = None, device_id: str | None = None):
        super().__init__(message)
        self.command = command
        self.device_id = device_id


def device_role(device_id: str) -> str:
    return f"{ROLE_PREFIX}{device_id}"


def device_acls(device_id: str) -> list[Command]:
    """Publish on its own topics (any domain, any channel incl. its status Last Will)."""
    # device_id is `[A-Za-z0-9_-]{1,64}` (api.models.DeviceId): no `+`, `#` or `/` can
    # widen the filter.
    return [
        {
            "acltype": "publishClientSend",
            "topic": f"hm/v1/+/{device_id}/#",
            "priority": 0,
            "allow": True,
        }
    ]


class DynsecProvisioner:
    """A `api.provisioning.DeviceProvisioner` backed by Mosquitto's dynamic-security plugin.

    Args:
        host, port: the broker listener the admin client uses (the internal one).
        username, password: a dynsec admin client (see docs/deploy.md).
        tls: connect with TLS; `ca_file` verifies the broker (default: system CAs).
        timeout_s: for connecting and for the answers to one batch of commands.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        tls: bool = False,
        ca_file: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not username:
            raise ValueError("the dynsec admin URL needs a username (mqtt://admin:pass@host)")
        self._host, self._port = host, port
        self._username, self._password = username, password
        self._tls, self._ca_file = tls, ca_file
        self._timeout_s = timeout_s

    # --- the DeviceProvisioner protocol -------------------------------------------------

    async def provision(
        self, *, device_id: str, domain: str, password_hash: str, password: str
    ) -> None:
        """Create (or, on a repeat, reset) the device's client and role."""
        role = device_role(device_id)
        answers = await self.execute(
            [
                {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
            ],
            device_id=device_id,
        )
        if answers[1].get("error") == _ALREADY["createClient"]:
            # A repeat (or a stale client of a deleted device of the same id): the new
            # password and role win.
            await self.execute(
                [
                    {"command": "setClientPassword", "username": device_id, "password": password},
                    {
                        "command": "modifyClient",
                        "username": device_id,
                        "roles": [{"rolename": role}],
                    },
                    {"command": "enableClient", "username": device_id},
                ],
                device_id=device_id,
            )
        logger.info("broker: provisioned device %s (%s)", device_id, domain)

    async def deprovision(self, *, device_id: str) -> None:
        """Delete the client (the broker disconnects it) and its role."""
        await self.execute(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_role(device_id)},
            ],
            device_id=device_id,
        )
        logger.info("broker: deprovisioned device %s", device_id)

    async def set_enabled(self, *, device_id: str, enabled: bool) -> None:
        """Disable (the broker disconnects it and refuses it) or enable the client."""
        command = "enableClient" if enabled else "disableClient"
        await self.execute([{"command": command, "username": device_id}], device_id=device_id)
        logger.info("broker: device %s %s", device_id, "enabled" if enabled else "disabled")

    # --- dynsec over MQTT ---------------------------------------------------------------

    async def execute(
        self, commands: Sequence[Mapping[str, Any]], *, device_id: str | None = None
    ) -> list[Command]:
        """Send one batch of dynsec commands; return their answers in order.

        Raises BrokerProvisioningError on a connection failure, a timeout, or an answer
        with an error other than the "already so" ones of an idempotent command.
        """
        answers = await asyncio.to_thread(self._execute_blocking, list(commands))
        for cmd, answer in zip(commands, answers, strict=True):
            error = answer.get("error")
            if error and error != _ALREADY.get(cmd["command"]):
                raise BrokerProvisioningError(
                    f"dynsec {cmd['command']} failed: {error}",
                    command=str(cmd["command"]),
                    device_id=device_id,
                )
        return answers

    def _execute_blocking(self, commands: list[Mapping[str, Any]]) -> list[Command]:
        tag = secrets.token_hex(8)
        tagged = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        answers: dict[str, Command] = {}
        done = threading.Event()
        refusal: list[str] = []

        def on_connect(client: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            if reason.is_failure:
                refusal.append(str(reason))
                done.set()
                return
            client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(
            client: paho.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
        ) -> None:
            if any(r.is_failure for r in reasons):
                refusal.append(f"subscribe to {RESPONSE_TOPIC} refused: {reasons[0]}")
                done.set()
                return
            # Publish only once subscribed, so no answer can arrive before we listen.
            client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            for answer in body.get("responses", []) if isinstance(body, dict) else []:
                key = answer.get("correlationData") if isinstance(answer, dict) else None
                if isinstance(key, str) and key.startswith(f"{tag}-"):
                    answers[key] = answer
            if len(answers) == len(tagged):
                done.set()

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            if not done.is_set():
                refusal.append(f"disconnected before answering ({reason})")
                done.set()

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"healthmon-dynsec-{tag}",
            protocol=paho.MQTTv5,
        )
        client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set(ca_certs=self._ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        where = f"{self._host}:{self._port}"
        try:
            client.connect(self._host, self._port, keepalive=max(5, int(self._timeout_s) * 2))
        except (OSError, ssl.SSLError) as exc:
            raise BrokerProvisioningError(f"cannot reach the broker at {where}: {exc}") from exc
        client.loop_start()
        try:
            if not done.wait(self._timeout_s):
                raise BrokerProvisioningError(
                    f"no dynsec answer from {where} within {self._timeout_s:g} s "
                    f"({len(answers)}/{len(tagged)} answers)"
                )
            if refusal:
                raise BrokerProvisioningError(f"the broker at {where} refused us: {refusal[0]}")
        finally:
            client.disconnect()
            client.loop_stop()
        return [answers[c["correlationData"]] for c in tagged]


def provisioner_from_settings(settings: Settings) -> DynsecProvisioner | None:
    """The provisioner for `HEALTHMON_BROKER_ADMIN_URL`, or None when it is unset.

    Raises ValueError (at start-up) when the URL is malformed or has no username.
    """
    if settings.broker_admin_url is None:
        return None
    target = parse_mqtt_url(settings.broker_admin_url.get_secret_value())
    return DynsecProvisioner(
        host=target.host,
        port=target.port,
        username=target.username or "",
        password=target.password.get_secret_value() if target.password else "",
        tls=target.tls,
        ca_file=settings.broker_ca_file,
    )


__all__ = [
    "BrokerProvisioningError",
    "DynsecProvisioner",
    "device_acls",
    "device_role",
    "provisioner_from_settings",
]
