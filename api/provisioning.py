"""Device MQTT credentials, and the one hook where broker provisioning plugs in.

The password is random and returned once; only a PBKDF2-SHA512 hash is stored, in
Mosquitto's own `$7$<iterations>$<salt b64>$<hash b64>` format (the format of
`mosquitto_passwd` and of the dynamic-security plugin's `password`/`salt`/`iterations`
fields), so broker provisioning (issue 7) can hand it over without knowing the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Protocol

logger = logging.getLogger(__name__)

# The password is 192 random bits, so the iteration count guards nothing a guesser could
# use; 1000 keeps device creation and broker-side checks cheap (Mosquitto's default is 101).
PBKDF2_ITERATIONS = 1000
_SALT_BYTES = 12  # what mosquitto_passwd uses


def new_device_password() -> str:
    return secrets.token_urlsafe(24)


def hash_device_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_device_password(stored: str, password: str) -> bool:
    try:
        _, kind, iterations, salt_b64, hash_b64 = stored.split("$")
        if kind != "7":
            return False
        digest = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt_b64), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, base64.b64decode(hash_b64))


class DeviceProvisioner(Protocol):
    """Makes the broker accept a device (user + ACL `hm/v1/+/<id>/#`), or forget it.

    Called after the registry change is committed; an error is logged and the device
    stays registered (provisioning can be retried), it never undoes the registry change.
    """

    async def provision(
        self, *, device_id: str, domain: str, password_hash: str, password: str
    ) -> None: ...

    async def deprovision(self, *, device_id: str) -> None: ...

    async def set_enabled(self, *, device_id: str, enabled: bool) -> None:
        """Refuse (and disconnect) a disabled device at the broker; accept it again."""
        ...


class NoopProvisioner:
    """The default until broker provisioning exists (issue 7): the broker's own config rules."""

    async def provision(
        self, *, device_id: str, domain: str, password_hash: str, password: str
    ) -> None:
        logger.debug("no broker provisioning configured for %s", device_id)

    async def deprovision(self, *, device_id: str) -> None:
        logger.debug("no broker provisioning configured for %s", device_id)

    async def set_enabled(self, *, device_id: str, enabled: bool) -> None:
        logger.debug("no broker provisioning configured for %s", device_id)
