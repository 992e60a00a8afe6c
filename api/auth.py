"""Who is calling: API keys (bearer), console users (password + signed session cookie), roles
and regions.

* An API key is `hm_<key_id>_<secret>` with a 256-bit secret; only the SHA-256 of the whole
  key is stored. A fast hash is right here: the key is random, not a human password, so
  there is nothing to brute-force, and every request verifies one.
* A user's password is hashed with argon2id (argon2-cffi defaults, RFC 9106).
* The session cookie is `<payload>.<HMAC-SHA256(session_secret, payload)>`, both base64url;
  the payload names the user, the user's session epoch and an expiry. The user row is read
  on every request, so a disabled user or a changed role takes effect at once, and bumping
  `session_epoch` (logout, password change) invalidates every cookie issued before.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from api import store
from api.problems import ApiError

logger = logging.getLogger(__name__)

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # in increasing power
SESSION_COOKIE = "healthmon_session"
SESSION_TTL_S = 12 * 3600  # one duty shift plus margin

_hasher = PasswordHasher()
# Verified when the user name is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("healthmon-dummy-password")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `regions` empty means every region."""

    name: str
    kind: Literal["key", "user"]
    role: Role
    regions: tuple[str, ...] = ()

    def has_role(self, least: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(least)

    def region_filter(self) -> list[str] | None:
        """SQL parameter: None for every region, else the list a query must stay within."""
        return list(self.regions) if self.regions else None

    def sees_region(self, region: str | None) -> bool:
        return not self.regions or (region is not None and region in self.regions)


# --- API keys -----------------------------------------------------------------------------


def new_api_key() -> tuple[str, str, str]:
    """Returns (key_id, the clear key to show once, the hash to store)."""
    key_id = secrets.token_hex(6)
    key = f"hm_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_id(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "hm" or not parts[1] or not parts[2]:
        return None
    return parts[1]


# --- passwords ----------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# --- session cookies ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_session(secret: str, username: str, epoch: int, now: datetime) -> str:
    payload = _b64(
        json.dumps(
            {"u": username, "e": epoch, "x": int(now.timestamp()) + SESSION_TTL_S},
            separators=(",", ":"),
        ).encode()
    )
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify_session(secret: str, cookie: str, now: datetime) -> tuple[str, int] | None:
    """(username, epoch) when the cookie is authentic and unexpired, else None."""
    payload, _, mac = cookie.partition(".")
    try:
        want = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _unb64(mac)):
            return None
        data = json.loads(_unb64(payload))
        if int(data["x"]) < now.timestamp():
            return None
        return str(data["u"]), int(data["e"])
    except (ValueError, KeyError, TypeError):
        return None


# --- the FastAPI dependencies -------------------------------------------------------------


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


# Declared for the OpenAPI document (security schemes); the header and cookie are read
# below so that a malformed one gets a precise 401.
_bearer_scheme = HTTPBearer(auto_error=False, description="an API key: `hm_<id>_<secret>`")
_cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="the console's session (POST /login)"
)


async def authenticate(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    _cookie: Annotated[str | None, Depends(_cookie_scheme)],
) -> Principal:
    """Bearer key first, then the session cookie; 401 when neither is valid."""
    state = request.app.state
    now = state.clock()
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("the Authorization header must be `Bearer <api key>`")
        key_id = parse_key_id(token)
        row = None
        if key_id is not None:
            async with state.pool.connection() as conn:
                row = await store.get_api_key(conn, key_id)
        if (
            row is None
            or row["revoked_at"] is not None
            or not hmac.compare_digest(row["secret_hash"], hash_api_key(token))
        ):
            raise _unauthorized("unknown or revoked API key")
        return Principal(f"key:{key_id}", "key", row["role"], tuple(row["regions"]))
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = verify_session(state.settings.session_secret.get_secret_value(), cookie, now)
        if found is not None:
            username, epoch = found
            async with state.pool.connection() as conn:
                user = await store.get_user(conn, username)
            if user is not None and not user["disabled"] and user["session_epoch"] == epoch:
                return Principal(username, "user", user["role"], tuple(user["regions"]))
        raise _unauthorized("the session has expired; log in again")
    raise _unauthorized("authentication required: `Authorization: Bearer <api key>`")


def require(least: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, who must hold at least role `least`."""

    async def dependency(
        principal: Annotated[Principal, Depends(authenticate)],
    ) -> Principal:
        if not principal.has_role(least):
            raise ApiError(
                403,
                f"this call needs the {least} role (you are {principal.role})",
                kind="forbidden",
            )
        return principal

    return dependency  # type: ignore[return-value]


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def check_region(principal: Principal, region: str | None, what: str) -> None:
    """403 when a region-limited caller acts on something outside its regions."""
    if not principal.sees_region(region):
        raise ApiError(
            403,
            f"{what} is outside the regions of this key ({', '.join(principal.regions)})",
            kind="forbidden",
        )


def check_regions(principal: Principal, regions: Sequence[str | None], what: str) -> None:
    for region in regions:
        check_region(principal, region, what)


async def verify_password_async(stored_hash: str | None, password: str) -> bool:
    # argon2 costs ~50 ms of CPU by design: keep it off the event loop.
    return await asyncio.to_thread(verify_password, stored_hash, password)
