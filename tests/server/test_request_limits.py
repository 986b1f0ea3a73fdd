"""Requests that once stalled or crashed the server (issue 24): huge bodies, costly schemas, slow admissions, bad text.

A real server on loopback with the real model. Slowness is made deterministic: admission work is replaced by a
function that blocks on a threading.Event until the test lets it go, and the tests assert the order things
happened in and the server's counters, never a duration.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest

import moa_stream.server.routes.chat as chat_route

from .live_server import serving, until

HI = [{"role": "user", "content": "hi"}]
REPEATS = {"type": "json_schema", "json_schema": {"name": "code", "schema": {
    "type": "object", "properties": {"code": {"type": "string", "pattern": "^(ab|cd){1,6000}$"}},
    "required": ["code"]}}}


def error_of(r: httpx.Response) -> dict[str, object]:
    """The OpenAI error object of a response (and that the body has exactly its shape)."""
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


async def raw_post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """POST over a plain socket, sending only `body` whatever Content-Length says; the status and the reply.

    A server that waited for the declared body would never answer: the bound below turns that into a failure.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + body)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 60)
    writer.close()
    return int(reply.split(b" ", 2)[1]), reply


async def test_a_declared_180_mb_body_is_answered_unread_401_for_a_wrong_key_then_413(moa):
    declared = {"Content-Type": "application/json", "Content-Length": str(180 << 20)}
    async with serving(moa, api_key="k3y") as srv:
        status, reply = await raw_post(srv.url, {**declared, "Authorization": "Bearer nope"}, b'{"model": ')
        assert status == 401 and b"invalid_api_key" in reply
        status, reply = await raw_post(srv.url, {**declared, "Authorization": "Bearer k3y"}, b'{"model": ')
        assert status == 413 and b"request_too_large" in reply and b'"param": "body"' in reply
        assert srv.in_flight == 0


async def test_a_chunked_body_is_cut_at_the_limit_with_a_413(moa):
    async def chunks():
        yield b'{"model": "moa-stream", "messages": [{"role": "user", "content": "'
        for _ in range(16):
            yield b"x" * 8192
        yield b'"}]}'

    async with serving(moa, max_body_bytes=64 << 10) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
        small = await srv.client().chat.completions.create(model="moa-stream:single", messages=HI, max_tokens=1)
        assert small.usage.completion_tokens == 1  # a body under the limit still goes through


async def test_a_non_ascii_bearer_token_is_a_401_not_a_500(moa):
    async with serving(moa, api_key="k3y") as srv, httpx.AsyncClient(base_url=srv.url) as http:
        for token in ("Bearer ключ".encode(), b"Bearer \xff\xfe"):
            r = await http.get("/v1/models", headers={"Authorization": token})
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"


@pytest.mark.parametrize(("body", "param"), [
    ('{"model": "moa-stream", "messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages[0].content"),
    ('{"model": "moa-stream", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\udc00"]}', "stop[0]"),
])
async def test_a_lone_surrogate_is_a_400_naming_the_field(live, engine, body, param):
    before = engine.stats().prefill_computed
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == param and err["code"] == "invalid_text" and "surrogate" in str(err["message"])
    assert engine.stats().prefill_computed == before and live.in_flight == 0


async def test_a_schema_repeating_past_the_cap_is_a_400_naming_the_field_and_nothing_is_compiled(live, monkeypatch):
    compiled: list[object] = []
    real = chat_route.check_compiles
    monkeypatch.setattr(chat_route, "check_compiles", lambda *a: compiled.append(a) or real(*a))
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream:single", messages=HI, response_format=REPEATS)
    err = info.value.body
    assert (err["param"], err["code"]) == ("response_format", "schema_too_complex")
    assert "response_format.json_schema.schema.properties.code.pattern" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": REPEATS["json_schema"]["schema"]}}
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream:single", messages=HI, tools=[tool])
    assert (info.value.body["param"], info.value.body["code"]) == ("tools", "schema_too_complex")
    assert "tools[0].function.parameters" in info.value.body["message"]
    assert compiled == []
    ok = {"type": "json_schema", "json_schema": {"name": "code", "schema": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^(ab|cd){1,8}$"}}}}}
    resp = await live.client().chat.completions.create(model="moa-stream:single", messages=HI, max_tokens=2,
                                                       response_format=ok)
    assert len(compiled) == 1 and resp.usage.completion_tokens >= 1  # under the cap it compiles and runs


class Blocker:
    """A blocking stand-in for admission work: it says when a thread entered it and waits to be let go."""

    def __init__(self) -> None:
        self.entered, self.go = threading.Event(), threading.Event()
        self.calls = 0

    def block(self) -> None:
        self.calls += 1
        self.entered.set()
        assert self.go.wait(120), "the test never let the admission go"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 120), "no admission entered the worker"


async def test_health_answers_while_an_admission_is_blocked_in_its_worker(moa, monkeypatch):
    gate, order = Blocker(), []
    real = moa.prompt_tokens

    def slow_prompt_tokens(*args, **kwargs):
        gate.block()
        return real(*args, **kwargs)

    monkeypatch.setattr(moa, "prompt_tokens", slow_prompt_tokens)
    async with serving(moa, max_concurrency=1) as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
        async def request() -> None:
            resp = await srv.client().chat.completions.create(model="moa-stream:single", messages=HI, max_tokens=1)
            order.append(("answered", resp.usage.completion_tokens))

        pending = asyncio.create_task(request())
        await gate.wait_entered()
        health = (await http.get("/health")).json()
        order.append(("health", health["in_flight"]))
        with pytest.raises(openai.RateLimitError):  # the slot is taken before admission: no second admission
            await srv.client().chat.completions.create(model="moa-stream:single", messages=HI, max_tokens=1)
        order.append(("429", gate.calls))
        gate.go.set()
        await pending
    assert order == [("health", 1), ("429", 1), ("answered", 1)]


async def test_a_compile_past_the_time_limit_is_a_400_and_its_thread_keeps_a_slot_until_it_ends(moa, monkeypatch):
    gate = Blocker()
    monkeypatch.setattr(chat_route, "check_compiles", lambda *a: gate.block())
    async with serving(moa, compile_timeout_s=0.05) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        body = {"model": "moa-stream:single", "messages": HI, "response_format": {"type": "json_object"}}
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and error_of(r)["code"] == "schema_too_complex"
        assert "0.05 s" in str(error_of(r)["message"])
        assert gate.entered.is_set() and srv.in_flight == 1  # the compile still runs and still counts
        assert (await http.get("/health")).json()["in_flight"] == 1
        gate.go.set()
        await until(lambda: srv.in_flight == 0, "the abandoned compile gives its slot back")


def test_the_issue_schema_is_what_the_cap_refuses():
    from moa_stream.server.grammar_limits import GrammarLimits, repeat_weight

    assert repeat_weight("^(ab|cd){1,6000}$") == 24000 > GrammarLimits().max_repeat_weight
    assert repeat_weight("^((ab|cd){1,30}x){1,30}$") == 30 * (4 * 30 + 1)  # nested repeats multiply
    assert repeat_weight(r"^[a-z{]{3}\{x}$") == 3 + 3  # a class and escaped braces are atoms, not quantifiers
    assert repeat_weight("^a{2,}b*$") == 3
