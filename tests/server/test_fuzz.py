"""API fuzz: schemathesis generates requests from the server's own OpenAPI schema (bounded examples).

Whatever it sends, the server answers in bounded time, never with a 5xx, and every 4xx body is OpenAI's error
object. The server runs a tiny random model with answers of a few tokens, so the module stays fast.

The server has an API key; a body hook and the headers take the fuzz where schemathesis alone never goes (its
run in issue 24 missed two 500s): half the bodies name the real model (a free-text `model` is otherwise a 404
before anything is read), some lose some or all of their optional fields, and some are one user turn ending in a
lone surrogate (`"\\ud800"`, valid JSON that schemathesis's UTF-8 alphabet never draws). Three cases in four send
the right key, the fourth a wrong one, mostly non-ASCII. Against the code before issue 24 (derandomized) the
bearer 500 shows up at 30 examples per operation, the surrogate one at 60 and 100, not at 30.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from moa_stream.server import ServerSettings

from .thread_server import server_thread

MAX_EXAMPLES = 100  # per operation; the code before issue 24 gave the bearer 500 at 30, the surrogate one at 60
API_KEY = "fuzz-key"
SEEN: dict[str, int] = {"cases": 0, "4xx": 0, "2xx": 0, "surrogates": 0, "odd_keys": 0}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[dict[str, Any]]:
    """The server on its own thread (schemathesis calls it synchronously)."""
    with server_thread(ServerSettings(max_concurrency=4, request_timeout_s=30, api_key=API_KEY)) as info:
        yield info
        print(f"\nschemathesis: {SEEN['cases']} cases, {SEEN['2xx']} 2xx, {SEEN['4xx']} 4xx, 0 5xx "
              f"({SEEN['surrogates']} with lone surrogates, {SEEN['odd_keys']} with generated keys)")
        moa = info["moa"]
        assert sum(s.sequences_open for s in moa.engine_stats().values()) == 0, "fuzzed requests leaked sequences"


def with_surrogates(messages: Any) -> list[dict[str, str]]:
    """A one-turn conversation whose text (the first generated text content, or "hi") ends in a lone surrogate.

    One user turn, because a generated conversation rarely ends with the user's turn and so never reaches the
    tokenizer, where the surrogate did harm."""
    texts = [m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)] \
        if isinstance(messages, list) else []
    return [{"role": "user", "content": (texts[0] if texts else "") + "hi \ud800"}]


def mutate(body: Any, real_model: bool, surrogates: bool, drop: float) -> Any:
    """The generated body naming the served model, holding lone surrogates, and without some optional fields, as
    drawn (every extra field is one more chance of a 400 before the request gets anywhere deep)."""
    if not isinstance(body, dict):
        return body
    optional = sorted(k for k in body if k not in ("model", "messages"))
    body = {k: v for k, v in body.items() if k not in optional[:round(drop * len(optional))]}
    if real_model:
        body = {**body, "model": "moa-stream"}
    return {**body, "messages": with_surrogates(body["messages"])} if surrogates and "messages" in body else body


@pytest.fixture(scope="module")
def api_schema(fuzzed: dict[str, Any]) -> schemathesis.BaseSchema:
    """The schema the app publishes, read over HTTP like any client would, with the hooks above."""
    schema = schemathesis.openapi.from_url(f"{fuzzed['url']}/openapi.json")

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        drawn = st.tuples(st.booleans(), st.booleans(), st.sampled_from([0.0, 0.5, 1.0]))
        return drawn.map(lambda d: mutate(body, *d))

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")
ODD_KEYS = ["ключ", "clé\xff", "\xe9", "k" * 12]  # non-ASCII (sent as their UTF-8 bytes) and a wrong ASCII one


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_no_hang_and_openai_shaped_errors(case: schemathesis.Case) -> None:
    SEEN["cases"] += 1
    if SEEN["cases"] % 4:  # most cases get past the key; every fourth sends a wrong one
        token = API_KEY
    else:
        token = ODD_KEYS[SEEN["cases"] // 4 % len(ODD_KEYS)]
        SEEN["odd_keys"] += 1
    if "\\ud800" in repr(case.body):
        SEEN["surrogates"] += 1
    response = case.call(timeout=60, headers={"Authorization": f"Bearer {token}".encode()
                                              .decode("latin-1")})  # a hang fails here
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        SEEN["4xx"] += 1
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        SEEN["2xx"] += 1
