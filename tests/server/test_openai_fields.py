"""Every OpenAI sampling field is honoured or refused with a 400 naming it (issue 24): stop, seed, logit_bias, top_p,
penalties, n, logprobs, and the server's own answer cap (`serve --max-tokens`).

The official `openai` client against a real server on loopback with the real model; greedy answers are
deterministic, so "honoured" is shown as a difference an ignored field could not make.
"""

from __future__ import annotations

import openai
import pytest

from moa_stream import MoA
from moa_stream.server.stop_strings import StopCut

from .live_server import server_config, serving

COUNT = [{"role": "user", "content": "Count from one to twenty, separated by commas."}]
GREEDY = {"model": "moa-stream:single", "messages": COUNT, "temperature": 0, "max_tokens": 8}


@pytest.mark.parametrize(("field", "value", "param"), [
    ("top_p", 0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("n", 2, "n"),
    ("n", 0, "n"),
    ("logprobs", True, "logprobs"),
    ("top_logprobs", 3, "top_logprobs"),
    ("frequency_penalty", 3, "frequency_penalty"),
    ("presence_penalty", -3, "presence_penalty"),
    ("stop", ["x"] * 17, "stop"),
    ("stop", [""], "stop"),
    ("logit_bias", {"abc": -100}, "logit_bias"),
    ("logit_bias", {"abc": "zz"}, "logit_bias.abc"),
    ("logit_bias", {"10": 5}, "logit_bias"),
    ("logit_bias", {"10": -101}, "logit_bias"),
    ("logit_bias", {str(10**9): -100}, "logit_bias"),
])
async def test_a_field_the_pipeline_cannot_honour_is_a_400_naming_it(live, engine, field, value, param):
    before = engine.stats().prefill_computed
    with pytest.raises(openai.BadRequestError) as info:
        await live.client().chat.completions.create(**GREEDY, extra_body={field: value})
    assert info.value.body["param"] == param, info.value.body
    assert engine.stats().prefill_computed == before  # refused before any agent ran


async def test_stop_ends_the_answer_before_the_first_stop_string_streamed_or_not(live):
    full = (await live.client().chat.completions.create(**GREEDY)).choices[0].message.content
    assert full and len(full) >= 6, full
    stop = full[3:5]
    expected = full[:full.find(stop)]
    cut = await live.client().chat.completions.create(**GREEDY, stop=[stop, "never appears"])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (expected, "stop")
    stream = await live.client().chat.completions.create(**GREEDY, stop=stop, stream=True)
    pieces, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert ("".join(pieces), finish) == (expected, "stop")


async def test_logit_bias_of_minus_100_bans_the_token_the_greedy_answer_starts_with(live, engine):
    first = (await live.client().chat.completions.create(**GREEDY)).choices[0].message.content
    token = engine.tokenizer.encode(first, add_special_tokens=False)[0]
    banned = await live.client().chat.completions.create(**GREEDY, logit_bias={str(token): -100})
    text = banned.choices[0].message.content
    assert text != first and not text.startswith(engine.tokenizer.decode([token]))
    zero = await live.client().chat.completions.create(**GREEDY, logit_bias={str(token): 0})
    assert zero.choices[0].message.content == first  # a bias of 0 changes nothing


async def test_a_seed_makes_a_sampled_answer_repeat(live):
    kw = {"model": "moa-stream:single", "temperature": 2.0, "max_tokens": 8,
          "messages": [{"role": "user", "content": "Write any word."}]}
    a = await live.client().chat.completions.create(**kw, seed=7)
    b = await live.client().chat.completions.create(**kw, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content
    others = {(await live.client().chat.completions.create(**kw, seed=s)).choices[0].message.content
              for s in (8, 9, 10)}
    assert len(others | {a.choices[0].message.content}) > 1  # the seed picks the draws


async def test_top_p_and_penalties_are_accepted_and_reach_the_aggregator(live):
    kw = {**GREEDY, "messages": [{"role": "user", "content": "Repeat the word cat ten times: cat cat cat"}]}
    plain = (await live.client().chat.completions.create(**kw)).choices[0].message.content
    assert plain.lower().count("cat") >= 2, plain  # greedy repeats itself here
    for penalty in ({"frequency_penalty": 2}, {"presence_penalty": 2}):
        resp = await live.client().chat.completions.create(**kw, top_p=0.5, **penalty)
        assert resp.choices[0].message.content != plain, penalty  # a penalised repeat is another answer


async def test_serve_max_tokens_caps_every_answer(engine):
    moa = MoA.from_config(server_config(tokens=8, ignore_eos=True), engines={"default": engine})
    async with serving(moa, max_tokens=3) as srv:
        for asked in (8, None):
            kw = {} if asked is None else {"max_tokens": asked}
            resp = await srv.client().chat.completions.create(model="moa-stream:single", messages=COUNT, **kw)
            assert (resp.usage.completion_tokens, resp.choices[0].finish_reason) == (3, "length")
    async with serving(moa) as srv:  # control: without the cap the request's 8 are written
        resp = await srv.client().chat.completions.create(model="moa-stream:single", messages=COUNT, max_tokens=8)
        assert resp.usage.completion_tokens == 8
    assert engine.stats().sequences_open == 0


@pytest.mark.parametrize(("pieces", "stops", "sent"), [
    (["Hel", "lo wor", "ld"], ("o w",), "Hell"),
    (["a", "b", "c"], ("bc",), "a"),
    (["ab", "c"], ("x",), "abc"),
    (["a<", "<", "b"], ("<<b",), "a"),
    (["a<", "x"], ("<<b",), "a<x"),
])
def test_stop_cut_holds_back_only_what_could_begin_a_stop_string(pieces, stops, sent):
    cut = StopCut(stops)
    out = "".join(cut.feed(p) for p in pieces) + cut.flush()
    assert out == sent
    assert cut.hit == (sent != "".join(pieces))
