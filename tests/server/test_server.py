"""The OpenAI-compatible server on loopback, driven by the official `openai` client and raw HTTP.

Every test starts a real uvicorn server in this process on a free 127.0.0.1 port, serving a real MoA
pipeline on the session's real default-model engine; answers are kept short so the module runs in minutes.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from moa_stream import MoA

from .live_server import server_config, serving, until


async def test_models_lists_the_pipeline_and_one_id_per_mode(live):
    ids = [m.id async for m in live.client().models.list()]
    assert ids[0] == "moa-stream"
    assert {"moa-stream:classic", "moa-stream:staircase", "moa-stream:staircase-reprefill",
            "moa-stream:debate", "moa-stream:debate-sequential"} <= set(ids)
    assert (await live.client().models.retrieve("moa-stream:classic")).id == "moa-stream:classic"


async def test_completion_carries_usage_and_moa_metrics(live, engine):
    resp = await live.client().chat.completions.create(
        model="moa-stream", messages=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Why is the sky blue?"}], max_tokens=6)
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    moa = resp.model_extra["moa"]
    assert moa["mode"] == "staircase"
    assert 0 < moa["ttft_s"] <= moa["total_s"]
    assert moa["chunks_ingested"] >= 2 and moa["prefill_computed"] > 0
    assert set(moa["agents"]) == {"analyst", "explainer", "aggregator"}
    # max_tokens maps to the aggregator: the answer stops at 6 tokens; proposers keep their own limit.
    assert resp.usage.completion_tokens == moa["answer_tokens"] <= 6
    assert moa["agents"]["aggregator"]["completion_tokens"] <= 6
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert engine.stats().sequences_open == 0


async def test_debate_is_served_as_a_model(live, engine):
    """`moa-stream:debate`: the agents answer, read each other's answers as they stream, revise; one answer back."""
    resp = await live.client().chat.completions.create(
        model="moa-stream:debate", messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=6)
    assert resp.choices[0].message.content
    moa = resp.model_extra["moa"]
    assert moa["mode"] == "debate"
    assert set(moa["agents"]) == {"analyst", "explainer", "analyst@2", "explainer@2", "aggregator"}
    assert {moa["agents"][n]["layer"] for n in ("analyst@2", "explainer@2")} == {1}  # the second round
    assert resp.usage.completion_tokens == moa["answer_tokens"] <= 6
    assert engine.stats().sequences_open == 0


async def test_streaming_sends_deltas_then_usage_and_moa(live):
    stream = await live.client().chat.completions.create(
        model="moa-stream:classic", messages=[{"role": "user", "content": "Name a primary color."}],
        stream=True, temperature=0.3)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.usage is not None and last.usage.completion_tokens >= 1
    moa = last.model_extra["moa"]
    assert moa["mode"] == "classic" and moa["ttft_s"] > 0
    assert len({c.id for c in chunks}) == 1


async def test_stream_options_include_usage_puts_usage_in_a_last_chunk_without_choices(live):
    stream = await live.client().chat.completions.create(
        model="moa-stream:single", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
        stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 4
    assert chunks[-1].model_extra["moa"]["mode"] == "single"
    assert chunks[-2].choices[0].finish_reason is not None


async def test_a_conversation_history_is_accepted(live):
    resp = await live.client().chat.completions.create(model="moa-stream:single", max_tokens=4, messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}])
    assert resp.choices[0].message.content


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"model": "moa-stream"}, 400, "messages"),
    ({"model": "moa-stream", "messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ({"model": "moa-stream", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
    ({"model": "moa-stream", "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
    ({"model": "moa-stream", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"model": "moa-stream", "messages": [{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}]},
     400, "`tools`"),
    ({"model": "moa-stream", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
    ({"model": "moa-stream", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "moa-stream", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400,
     "temperature"),
    ({"model": "moa-stream", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=2"),
])
async def test_bad_requests_get_openai_style_json_errors(live, body, status, needle):
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]
    assert live.in_flight == 0


async def test_malformed_json_and_unknown_routes_get_json_errors(live):
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/v1/chat/completions", content=b"{not json",
                            headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        r = await http.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_the_openai_client_raises_typed_errors(live):
    client = live.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message"):
        await client.chat.completions.create(model="moa-stream", messages=[{"role": "assistant", "content": "x"}])


async def test_api_key_is_required_when_set(moa):
    async with serving(moa, api_key="s3cret") as srv:
        with pytest.raises(openai.AuthenticationError):
            await srv.client("wrong").models.list()
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.get("/v1/models")).status_code == 401
            assert (await http.post("/v1/chat/completions", json={})).status_code == 401
        assert "moa-stream" in [m.id async for m in srv.client("s3cret").models.list()]


async def test_past_the_concurrency_limit_requests_get_429(moa, engine):
    async with serving(moa, max_concurrency=1) as srv, httpx.AsyncClient(base_url=srv.url, timeout=300) as http:
        body = {"model": "moa-stream", "messages": [{"role": "user", "content": "Tell me a story."}],
                "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()
            await anext(lines)  # the stream is open and holds the only slot
            with pytest.raises(openai.RateLimitError, match="too many requests") as info:
                await srv.client().chat.completions.create(model="moa-stream",
                                                           messages=[{"role": "user", "content": "hi"}])
            assert info.value.code == "concurrency_limit" and info.value.response.headers["retry-after"] == "1"
            assert srv.in_flight == 1  # the refused request took no slot
            rest = [line async for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]"
            last = json.loads(rest[-2].removeprefix("data: "))
            assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["usage"]["completion_tokens"] > 0
        await until(lambda: srv.in_flight == 0, "the slot is given back")
        before = engine.stats()
        resp = await srv.client().chat.completions.create(model="moa-stream:single", max_tokens=2,
                                                          messages=[{"role": "user", "content": "hi"}])
        after = engine.stats()
        assert 1 <= resp.usage.completion_tokens <= 2 and resp.choices[0].finish_reason in ("stop", "length")
        assert after.decode_tokens - before.decode_tokens == resp.model_extra["moa"]["decode_tokens"] > 0
        assert after.sequences_open == 0 and srv.in_flight == 0


async def test_per_request_timeout_stops_the_run(moa, engine):
    async with serving(moa, request_timeout_s=0.01) as srv:
        with pytest.raises(openai.APIStatusError) as info:
            await srv.client().chat.completions.create(model="moa-stream",
                                                       messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 504
        stream = await srv.client().chat.completions.create(
            model="moa-stream", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError, match="timeout"):
            async for _ in stream:
                pass
        await until(lambda: engine.stats().sequences_open == 0, "the timed-out runs free their sequences")


async def test_a_client_leaving_mid_stream_cancels_its_agents(engine):
    """Each proposer would write 300 tokens (EOS ignored); the client leaves after the first answer delta."""
    moa = MoA.from_config(server_config(tokens=300, ignore_eos=True), engines={"default": engine})
    decoded_before = engine.stats().decode_tokens
    async with serving(moa) as srv, httpx.AsyncClient(base_url=srv.url, timeout=300) as http:
        body = {"model": "moa-stream", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
                    break  # the first answer text: the aggregator is decoding
            assert engine.stats().sequences_open > 0
        await until(lambda: engine.stats().sequences_open == 0, "the disconnect frees every sequence")
        await until(lambda: srv.in_flight == 0, "the slot is given back")
    assert engine.stats().kv_bytes_resident == 0
    assert engine.stats().decode_tokens - decoded_before < 300, "the agents ran on after the client left"


async def test_a_client_leaving_a_non_streaming_request_cancels_it(engine):
    moa = MoA.from_config(server_config(tokens=300, ignore_eos=True), engines={"default": engine})
    decoded_before = engine.stats().decode_tokens
    async with serving(moa) as srv:
        client = httpx.AsyncClient(base_url=srv.url, timeout=300)
        body = {"model": "moa-stream", "messages": [{"role": "user", "content": "Tell me a long story."}]}
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await until(lambda: engine.stats().sequences_open > 0, "the request's agents start")
        request.cancel()  # drops the connection
        await asyncio.gather(request, return_exceptions=True)
        await client.aclose()
        await until(lambda: engine.stats().sequences_open == 0, "the disconnect frees every sequence")
        await until(lambda: srv.in_flight == 0, "the slot is given back")
    assert engine.stats().decode_tokens - decoded_before < 300, "the agents ran on after the client left"


async def test_sixteen_concurrent_streaming_clients_all_finish_and_free_everything(live, engine):
    client = live.client()

    async def ask(i: int) -> tuple[str, str | None, dict]:
        stream = await client.chat.completions.create(
            model="moa-stream", messages=[{"role": "user", "content": f"Give me fact number {i} about cats."}],
            max_tokens=8, stream=True)
        text, finish, extra = "", None, {}
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
            extra = c.model_extra.get("moa") or extra
        return text, finish, extra

    results = await asyncio.gather(*(ask(i) for i in range(16)))
    assert len(results) == 16
    for text, finish, extra in results:
        assert text and finish in ("stop", "length")
        assert extra["answer_tokens"] <= 8 and extra["ttft_s"] > 0
    stats = engine.stats()
    assert stats.sequences_open == 0 and stats.sequences_resident == 0 and stats.kv_bytes_resident == 0
    assert live.in_flight == 0
    async with httpx.AsyncClient(base_url=live.url) as http:
        served = (await http.get("/v1/moa/stats")).json()
    assert served["in_flight"] == 0
    assert json.dumps(served["engines"]["default"]["sequences_resident"]) == "0"
