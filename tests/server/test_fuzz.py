"""API fuzz: schemathesis generates requests from the server's own OpenAPI schema (bounded examples).

Whatever it sends, the server answers in bounded time, never with a 5xx, and every 4xx body is OpenAI's error
object. The server runs a tiny random model with answers of a few tokens, so the module stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from moa_stream.server import ServerSettings

from .thread_server import server_thread

MAX_EXAMPLES = 30
SEEN: dict[str, int] = {"cases": 0, "4xx": 0, "2xx": 0}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[dict[str, Any]]:
    """The server on its own thread (schemathesis calls it synchronously)."""
    with server_thread(ServerSettings(max_concurrency=4, request_timeout_s=30)) as info:
        yield info
        print(f"\nschemathesis: {SEEN['cases']} cases, {SEEN['2xx']} 2xx, {SEEN['4xx']} 4xx, 0 5xx")
        moa = info["moa"]
        assert sum(s.sequences_open for s in moa.engine_stats().values()) == 0, "fuzzed requests leaked sequences"


@pytest.fixture(scope="module")
def api_schema(fuzzed: dict[str, Any]) -> schemathesis.BaseSchema:
    """The schema the app publishes, read over HTTP like any client would."""
    return schemathesis.openapi.from_url(f"{fuzzed['url']}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_no_hang_and_openai_shaped_errors(case: schemathesis.Case) -> None:
    response = case.call(timeout=60)  # a hang fails here
    SEEN["cases"] += 1
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        SEEN["4xx"] += 1
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        SEEN["2xx"] += 1
