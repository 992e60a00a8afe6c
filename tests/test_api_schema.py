"""Property-based checks against the served OpenAPI document (schemathesis): no 500
anywhere, and every response matches its documented status, content type and schema.

The app runs under uvicorn in a thread (its own event loop and lifespan) on a free port;
schemathesis calls it over HTTP with an admin key, so every operation is reachable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api import create_app
from tests.conftest import free_port
from tests.test_api_support import make_keys, settings_for


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process owns the signals
        pass


@pytest.fixture(scope="session")
def live_api(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the API served by uvicorn in a background thread."""
    keys = asyncio.run(make_keys(pg_dsn, "fuzz-region"))
    port = free_port()
    app = create_app(settings_for(pg_dsn), sse_poll_s=0.2)
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the API did not start under uvicorn")
        time.sleep(0.05)
    assert httpx.get(f"{base}/healthz").status_code == 200
    yield base, keys["admin"]
    server.should_exit = True
    thread.join(10)


def _offline_schema() -> schemathesis.BaseSchema:
    """The document the app serves, built without a database (for collection time)."""
    app = create_app(settings_for("postgresql://unused@127.0.0.1:1/unused"))
    return schemathesis.openapi.from_dict(app.openapi())


SCHEMA = _offline_schema()
# The event stream never ends by itself; it has its own tests (test_api_endpoints.py).
_ALL: list[Any] = [result.ok() for result in SCHEMA.get_all_operations()]  # type: ignore[union-attr]
OPERATIONS = [
    op
    for op in _ALL
    if op.path.startswith("/api/v1/") or op.path in ("/healthz", "/readyz", "/metrics")
    if op.path != "/api/v1/alerts/stream"
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_the_served_document_is_the_one_fuzzed(live_api: tuple[str, str]) -> None:
    base, _ = live_api
    served = httpx.get(f"{base}/openapi.json").json()
    assert served["paths"].keys() == SCHEMA.raw_schema["paths"].keys()


def _has_inputs(op: Any) -> bool:
    return bool(op.definition.raw.get("parameters") or op.definition.raw.get("requestBody"))


# Negative cases (invalid inputs) only where there is an input to get wrong.
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if _has_inputs(op)
]


@pytest.mark.parametrize("operation,mode", CASES, ids=[f"{m.value}-{op.label}" for op, m in CASES])
def test_api_matches_its_openapi_document(
    live_api: tuple[str, str], operation: Any, mode: GenerationMode
) -> None:
    base, key = live_api
    # A login verifies an argon2 hash (deliberately slow): fewer examples there.
    examples = 4 if operation.path == "/api/v1/login" else 10

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            checks=CHECKS,
            timeout=10,
        )

    check()
