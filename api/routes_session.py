"""Console log-in: user name and password -> an HttpOnly session cookie; log-out; who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api import auth, store
from api.auth import Viewer
from api.models import LoginRequest, Me
from api.problems import PROBLEM_RESPONSES, ApiError

router = APIRouter(prefix="/api/v1", tags=["session"])


@router.post(
    "/login",
    response_model=Me,
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (400, 401, 422, 503)},
)
async def login(body: LoginRequest, request: Request, response: Response) -> Me:
    """Check the password and set the session cookie (HttpOnly, SameSite=Strict)."""
    state = request.app.state
    async with state.pool.connection() as conn:
        user = await store.get_user(conn, body.username)
    ok = await auth.verify_password_async(user["password_hash"] if user else None, body.password)
    if user is None or not ok or user["disabled"]:
        raise ApiError(401, "wrong user name or password", kind="unauthorized")
    cookie = auth.sign_session(
        state.settings.session_secret.get_secret_value(),
        user["username"],
        user["session_epoch"],
        state.clock(),
    )
    response.set_cookie(
        auth.SESSION_COOKIE,
        cookie,
        max_age=auth.SESSION_TTL_S,
        httponly=True,
        samesite="strict",  # with JSON-only bodies, the CSRF defence for cookie sessions
        secure=request.url.scheme == "https",
        path="/",
    )
    return Me(
        username=user["username"], kind="user", role=user["role"], regions=list(user["regions"])
    )


@router.post("/logout", status_code=204, responses=PROBLEM_RESPONSES)
async def logout(principal: Viewer, request: Request) -> Response:
    """End every session of this user (bumps its session epoch) and clear the cookie."""
    if principal.kind == "user":
        async with request.app.state.pool.connection() as conn:
            await store.bump_session_epoch(conn, principal.name)
    response = Response(status_code=204)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=Me, responses=PROBLEM_RESPONSES)
async def me(principal: Viewer) -> Me:
    """The caller: user name (or `key:<key_id>`), role and regions (empty: all)."""
    return Me(
        username=principal.name,
        kind=principal.kind,
        role=principal.role,
        regions=list(principal.regions),
    )
