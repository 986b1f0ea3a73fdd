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
from moa_stream.server.admission import Tenancy, tenant_salt
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


def test_tenant_salt_separates_api_keys_addresses_and_shared_salts_and_never_carries_either():
    tenancy = Tenancy(b"server secret")
    peer_a, peer_b = tenancy.peer_salt("127.0.0.1"), tenancy.peer_salt("127.0.0.2")
    assert peer_a != peer_b and "127.0.0.1" not in peer_a
    assert peer_a != Tenancy(b"another server").peer_salt("127.0.0.1")  # unguessable without the secret
    assert tenant_salt(None, None, peer_a) == peer_a
    shared = tenant_salt(None, "mine", peer_a)
    assert shared == tenant_salt(None, "mine", peer_b) != peer_a  # the same cache_salt shares, from any address
    assert "mine" not in shared
    a, b = tenant_salt("key-a", None), tenant_salt("key-b", None)
    assert a != b and a is not None and "key-a" not in a
    assert tenant_salt("key-a", "x") not in (a, tenant_salt("key-b", "x"), tenant_salt(None, "x", peer_a))
    assert tenant_salt("key-a", "x") == tenant_salt("key-a", "x")


SINGLE = {"model": "moa-stream:single", "max_tokens": 1, "temperature": 0}


def secret_prompt(pin: str) -> list[dict[str, str]]:
    """A prompt whose PIN is followed by enough text to fill whole KV blocks after it."""
    filler = " ".join(f"Line {i} of the account notes says nothing of interest." for i in range(8))
    return [{"role": "user", "content": f"My bank PIN is {pin}. {filler} Summarise the notes."}]


def reuse(resp) -> tuple[int, int, int, int]:
    """What an answer tells its client about the cache: prompt and completion tokens, prefill computed and reused."""
    return (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.moa["prefill_computed"],
            resp.moa["prefill_reused"])


async def test_a_pin_guess_from_another_address_reuses_nothing_and_right_and_wrong_guesses_look_alike(live, engine):
    """The attack of issue 24: a victim sends a prompt with a PIN; an attacker guesses it and reads `usage`."""
    assert len(engine.tokenizer.encode("4821")) == len(engine.tokenizer.encode("7390"))
    victim = live.client()  # from 127.0.0.1
    await victim.chat.completions.create(messages=secret_prompt("4821"), **SINGLE)
    right = await live.client(address="127.0.0.2").chat.completions.create(messages=secret_prompt("4821"), **SINGLE)
    wrong = await live.client(address="127.0.0.3").chat.completions.create(messages=secret_prompt("7390"), **SINGLE)
    assert reuse(right)[3] == 0 and reuse(wrong)[3] == 0
    assert reuse(right) == reuse(wrong)  # usage and the moa counters say the same whatever the guess
    # Control: the same guesses from the victim's own address do tell (the cache is there, and reused).
    own_right = await victim.chat.completions.create(messages=secret_prompt("4821"), **SINGLE)
    own_wrong = await victim.chat.completions.create(messages=secret_prompt("7390"), **SINGLE)
    assert reuse(own_right)[3] > reuse(own_wrong)[3] + engine.block_size


async def test_clients_sending_the_same_cache_salt_share_the_cache_on_purpose(live):
    kw = {"messages": secret_prompt("1111"), "extra_body": {"cache_salt": "team-blue"}, **SINGLE}
    first = await live.client().chat.completions.create(**kw)
    other = await live.client(address="127.0.0.2").chat.completions.create(**kw)
    assert reuse(first)[3] == 0 < reuse(other)[3]


async def test_with_api_keys_every_request_is_salted_by_its_key(moa):
    # Fails if the key were dropped from the salt: the keyed request would reuse the keyless one's blocks.
    kw = {"messages": secret_prompt("2222"), "extra_body": {"cache_salt": "x"}, **SINGLE}
    async with serving(moa) as open_srv:
        warm = await open_srv.client().chat.completions.create(**kw)
        again = await open_srv.client(address="127.0.0.2").chat.completions.create(**kw)
        assert reuse(warm)[3] == 0 < reuse(again)[3]  # salt "x" alone is shared
    async with serving(moa, api_key="s3cret") as srv:
        keyed = await srv.client("s3cret").chat.completions.create(**kw)
        repeat = await srv.client("s3cret").chat.completions.create(**kw)
    assert reuse(keyed)[3] == 0 < reuse(repeat)[3]


def test_the_bad_temperature_floor_is_below_every_sane_value():
    from moa_stream.config import MIN_TEMPERATURE, check_temperature

    assert check_temperature(0.0) == 0.0 and check_temperature(MIN_TEMPERATURE) == MIN_TEMPERATURE
    with pytest.raises(ValueError, match="at least"):
        check_temperature(math.nextafter(MIN_TEMPERATURE, 0))


async def test_a_prompt_far_past_the_context_is_refused_from_a_prefix_without_tokenising_it_whole(live, moa, engine,
                                                                                                  monkeypatch):
    counted: list[str] = []
    real = moa.prompt_tokens
    monkeypatch.setattr(moa, "prompt_tokens", lambda q, h=None: counted.append(q) or real(q, h))
    huge = "the sky is blue " * engine.max_model_len  # 16 characters a copy: twice the probe's length
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(model="moa-stream", messages=[{"role": "user", "content": huge}])
    assert info.value.code == "context_length_exceeded" and "already" in info.value.body["message"]
    assert counted == []  # the whole prompt was never templated and tokenised
    fits = await live.client().chat.completions.create(model="moa-stream:single", messages=HI, max_tokens=1)
    assert fits.usage.completion_tokens == 1 and len(counted) == 1
