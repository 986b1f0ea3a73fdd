"""OpenAI `response_format` and the sampling penalty fields, driven by the official `openai` client."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from engine import Grammar, JsonSchema, SamplingParams, UnsupportedFeatureError
from engine.remote.http_engine import HttpEngine
from moa_stream import MoA

from .live_server import server_config, serving

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON with a name and an age."}]


@pytest.fixture
async def json_live(engine):
    """A server whose aggregator may write a whole small JSON object (the default test server stops at 8 tokens)."""
    moa = MoA.from_config(server_config(tokens=48), engines={"default": engine})
    async with serving(moa, max_concurrency=4) as srv:
        yield srv
    assert engine.stats().sequences_open == 0, "a request leaked sequences"


async def test_json_schema_answer_parses_and_validates(json_live):
    resp = await json_live.client().chat.completions.create(
        model="moa-stream:classic", messages=ASK, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content), PERSON)


async def test_staircase_modes_write_a_structured_answer_in_one_generation(json_live):
    resp = await json_live.client().chat.completions.create(
        model="moa-stream", messages=ASK, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    jsonschema.validate(json.loads(resp.choices[0].message.content), PERSON)
    assert resp.model_extra["moa"]["mode"] == "classic"


async def test_json_object_answer_streams_one_object(json_live):
    stream = await json_live.client().chat.completions.create(
        model="moa-stream:classic", messages=[{"role": "user", "content": "Give a JSON object with a color."}],
        temperature=0, stream=True, response_format={"type": "json_object"})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still the start of an object
        assert text.lstrip().startswith("{")


async def test_text_response_format_is_plain_text(live):
    resp = await live.client().chat.completions.create(
        model="moa-stream:classic", messages=[{"role": "user", "content": "Say hi."}],
        response_format={"type": "text"}, max_tokens=4)
    assert resp.choices[0].message.content


@pytest.mark.parametrize(("response_format", "needle"), [
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "objectx"}}}, "objectx"),
    ({"type": "json_schema", "json_schema": {"name": "has space", "schema": {"type": "object"}}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "p"}}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": []}}, "schema"),
    ({"type": "xml"}, "response_format"),
])
async def test_bad_response_formats_get_clear_400s(live, response_format, needle):
    with pytest.raises(openai.BadRequestError, match=needle) as info:
        await live.client().chat.completions.create(
            model="moa-stream", messages=[{"role": "user", "content": "Hi"}], response_format=response_format)
    assert info.value.body["param"].startswith("response_format")


@pytest.mark.parametrize(("field", "value"), [
    ("frequency_penalty", 2.5), ("presence_penalty", -2.1), ("repetition_penalty", 0), ("repetition_penalty", 11),
    ("min_p", 1.5), ("min_p", -0.1),
])
async def test_penalties_out_of_range_get_400(live, field, value):
    body = {"model": "moa-stream", "messages": [{"role": "user", "content": "Hi"}], field: value}
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field


async def test_penalties_reach_the_aggregator_sampling(live, engine, monkeypatch):
    seen = []
    generate = type(engine).generate

    def spy(self, seq, sampling=None):
        seen.append(sampling)
        return generate(self, seq, sampling)

    monkeypatch.setattr(type(engine), "generate", spy)
    resp = await live.client().chat.completions.create(
        model="moa-stream:classic", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=4,
        frequency_penalty=0.5, presence_penalty=0.25, extra_body={"repetition_penalty": 1.3, "min_p": 0.05})
    assert resp.choices[0].message.content
    answer = [p for p in seen if p is not None and p.max_tokens == 4]
    assert answer, "the aggregator generated the answer"
    p = answer[-1]
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty, p.min_p) == (0.5, 0.25, 1.3, 0.05)
    proposers = [s for s in seen if s is not None and s.max_tokens != 4]
    assert proposers and all(s.frequency_penalty == 0.0 for s in proposers), "the penalties are the answer's only"


async def test_http_backend_passes_a_schema_through_and_reports_refusals(json_live, engine):
    """HttpEngine on this server (OpenAI's dialect): a JsonSchema travels as response_format and constrains the
    answer; a schema the server refuses (400) and a Grammar OpenAI's API cannot express are clear errors."""
    eng = HttpEngine(f"{json_live.url}/v1", "moa-stream:classic", tokenizer=engine.tokenizer, api="chat")
    try:
        prompt = list(engine.tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True,
                                                           return_dict=False))
        seq = await eng.open(prompt)
        out = [d async for d in eng.generate(seq, SamplingParams(max_tokens=48, structured=JsonSchema.of(PERSON)))]
        jsonschema.validate(json.loads("".join(d.text for d in out)), PERSON)
        other = await eng.open(prompt)
        with pytest.raises(UnsupportedFeatureError, match=r"refused .*JsonSchema.*HTTP 400.*objectx"):
            async for _ in eng.generate(other, SamplingParams(structured=JsonSchema.of({"type": "objectx"}))):
                pass
        with pytest.raises(UnsupportedFeatureError, match=r"Grammar .*openai server"):
            async for _ in eng.generate(other, SamplingParams(structured=Grammar('root ::= "yes" | "no"'))):
                pass
    finally:
        await eng.shutdown()
