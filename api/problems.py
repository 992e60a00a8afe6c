"""RFC 9457 problem details: every error the API returns is `application/problem+json`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://healthmon.example/problems/"


class InvalidParam(BaseModel):
    """One rejected input: where it was (`query.limit`, `body.note`) and why."""

    name: str
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details, with `invalid_params` for validation errors (section 3.2)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    invalid_params: list[InvalidParam] | None = Field(
        default=None, description="for 422: every parameter that was rejected"
    )


class ApiError(Exception):
    """An error with an HTTP status, raised by handlers and turned into a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        invalid_params: list[InvalidParam] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.invalid_params = invalid_params
        self.headers = headers


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, f"{what} {ident!s} not found", kind="not-found")


def invalid(name: str, reason: str) -> ApiError:
    """A 422 naming the one parameter that is wrong (for checks a pydantic model cannot do)."""
    return ApiError(
        422,
        f"{name}: {reason}",
        kind="validation",
        invalid_params=[InvalidParam(name=name, reason=reason)],
    )


def problem_response(
    status: int,
    detail: str | None,
    *,
    instance: str | None = None,
    kind: str | None = None,
    invalid_params: list[InvalidParam] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(
        type=_TYPE_BASE + kind if kind else "about:blank",
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        invalid_params=invalid_params,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _loc_name(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "request"


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem_response(
        exc.status,
        exc.detail,
        instance=request.url.path,
        kind=exc.kind,
        invalid_params=exc.invalid_params,
        headers=exc.headers,
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {
        400: "bad-request",
        401: "unauthorized",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
    }
    return problem_response(
        exc.status_code,
        str(exc.detail),
        instance=request.url.path,
        kind=kind.get(exc.status_code),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    params = [
        InvalidParam(name=_loc_name(err.get("loc", ())), reason=str(err.get("msg", "invalid")))
        for err in exc.errors()
    ]
    detail = "; ".join(f"{p.name}: {p.reason}" for p in params) or "invalid request"
    return problem_response(
        422, detail, instance=request.url.path, kind="validation", invalid_params=params
    )


async def _on_db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A database outage is a run-time condition (style: heal at run time): 503, retry later.
    logger.warning("database unavailable while serving %s: %s", request.url.path, exc)
    return problem_response(
        503,
        "the database is unavailable; retry later",
        instance=request.url.path,
        kind="unavailable",
        headers={"Retry-After": "5"},
    )


async def _on_data_error(request: Request, exc: Exception) -> JSONResponse:
    # Input the database cannot take (a NUL byte in text, a number out of range) that no
    # pydantic constraint caught: the caller's mistake, not ours.
    return problem_response(
        422,
        f"a value cannot be used: {str(exc).splitlines()[0] if str(exc) else 'invalid'}",
        instance=request.url.path,
        kind="validation",
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error serving %s", request.url.path, exc_info=exc)
    return problem_response(500, "internal error", instance=request.url.path, kind="internal")


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error path (ours, routing, validation, driver) to a problem response."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(psycopg.OperationalError, _on_db_unavailable)
    app.add_exception_handler(psycopg.DataError, _on_data_error)
    app.add_exception_handler(Exception, _on_unexpected)


#: OpenAPI `responses=` entry for the errors every /api/v1 call can return.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "model": Problem,
        "description": desc,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for code, desc in (
        (400, "the body is not parseable (not JSON)"),
        (401, "no or bad credentials"),
        (403, "the role or region does not allow this"),
        (404, "not found"),
        (409, "conflicts with the current state (exists already, not firing, ...)"),
        (422, "a parameter or the body is invalid"),
        (503, "the database is unavailable; retry later"),
    )
}
