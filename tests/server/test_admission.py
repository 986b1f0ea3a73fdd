"""What a request must pass before any agent runs: sane sampling, a prompt that fits, a tenant's cache salt.

Driven by the official `openai` client against a real server on loopback (see test_server.serving).
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from engine import InvalidTokensError
from moa_stream import MoAError
from moa_stream.server.admission import tenant_salt
from moa_stream.server.errors import failure_of

from .live_server import serving

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("temperature", [1e-40, 1e-6, -0.5, 2.5])
async def test_a_temperature_that_would_break_sampling_is_a_400_naming_the_field(live, engine, temperature):
    before = engine.stats()
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream", messages=HI, temperature=temperature)
    err = info.value.body
    assert err["param"] == "temperature" and "temperature" in err["message"] and err["type"]
    assert engine.stats().prefill_computed == before.prefill_computed  # no agent ran


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e-40"])
async def test_non_finite_temperatures_in_raw_json_are_rejected(live, raw):
    body = '{"model": "moa-stream", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + raw + "}"
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_greedy_temperature_of_zero_is_fine(live):
    resp = await live.client().chat.completions.create(model="moa-stream:single", messages=HI, temperature=0,
                                                       max_tokens=2)
    assert resp.choices[0].finish_reason in ("stop", "length")


async def test_an_over_long_prompt_is_a_400_context_length_exceeded_before_any_agent_runs(live, engine):
    limit = engine.max_model_len
    long_text = "the sky is blue " * (limit // 3)  # > limit tokens once templated
    before = engine.stats()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            await live.client().chat.completions.create(
                model="moa-stream", messages=[{"role": "user", "content": long_text}], stream=stream)
        assert info.value.code == "context_length_exceeded"
        assert info.value.body["param"] == "messages"
        assert f"maximum context length is {limit} tokens" in info.value.body["message"]
    after = engine.stats()
    assert after.prefill_computed == before.prefill_computed and after.sequences_open == 0
    assert live.in_flight == 0


async def test_max_tokens_past_the_context_is_a_400_too(live):
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream", messages=HI, max_tokens=10**7)
    assert info.value.code == "context_length_exceeded"
    assert "in the completion" in info.value.body["message"]


async def test_history_counts_toward_the_context(live, engine):
    filler = "lorem ipsum dolor " * (engine.max_model_len // 5)
    history = [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream", messages=[*history, *HI], max_tokens=4)
    assert info.value.code == "context_length_exceeded"


def test_an_engine_length_error_behind_a_pipeline_failure_maps_to_context_length_exceeded():
    try:
        try:
            raise InvalidTokensError("sequence of 9000 tokens exceeds max_model_len=8192")
        except InvalidTokensError as exc:
            raise MoAError("all 2 proposers failed") from exc
    except MoAError as failure:
        err = failure_of(failure)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert failure_of(InvalidTokensError("too long")).status == 400
    assert failure_of(MoAError("all failed")).status == 500


def test_tenant_salt_separates_api_keys_and_never_carries_the_key():
    assert tenant_salt(None, None) is None
    assert tenant_salt(None, "mine") == "mine"
    a, b = tenant_salt("key-a", None), tenant_salt("key-b", None)
    assert a != b and a is not None and "key-a" not in a
    assert tenant_salt("key-a", "x") not in (a, tenant_salt("key-b", "x"), "x")
    assert tenant_salt("key-a", "x") == tenant_salt("key-a", "x")


async def test_cache_salt_is_accepted_and_answers_like_an_unsalted_request(live):
    # Needs MoA.stream(cache_salt=...) (cache-salt plumbing, merged separately).
    kw = {"model": "moa-stream:single", "messages": HI, "max_tokens": 3, "temperature": 0}
    plain = await live.client().chat.completions.create(**kw)
    salted = await live.client().chat.completions.create(**kw, extra_body={"cache_salt": "tenant-1"})
    assert salted.choices[0].message.content == plain.choices[0].message.content


async def test_with_api_keys_every_request_is_salted_by_its_key(moa):
    # Needs MoA.stream(cache_salt=...) (cache-salt plumbing, merged separately).
    async with serving(moa, api_key="s3cret") as srv:
        resp = await srv.client("s3cret").chat.completions.create(model="moa-stream:single", messages=HI,
                                                                  max_tokens=2)
        assert resp.choices[0].message.content is not None


def test_the_bad_temperature_floor_is_below_every_sane_value():
    from moa_stream.config import MIN_TEMPERATURE, check_temperature

    assert check_temperature(0.0) == 0.0 and check_temperature(MIN_TEMPERATURE) == MIN_TEMPERATURE
    with pytest.raises(ValueError, match="at least"):
        check_temperature(math.nextafter(MIN_TEMPERATURE, 0))
