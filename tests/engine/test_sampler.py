"""The sampler's penalties and min_p on hand-made logits, the engine's greedy decoding against transformers'
with a repetition penalty, validation naming the field, and the penalties' pass-through on HTTP."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from engine import InvalidSamplingError, SamplingParams
from engine.remote.http_engine import HttpEngine
from engine.sampler import apply_penalties, sample
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, tiny_llama
from tests.misbehaving_server import MisbehavingServer

VOCAB = 512


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_context_tokens() -> None:
    """HF semantics: every token in the context (prompt and generated), once, whatever its count."""
    logits = torch.tensor([2.0, -2.0, 1.0, 4.0])
    p = SamplingParams(repetition_penalty=2.0)
    out = apply_penalties(logits, p, context=[0, 1, 0, 0], generated=0)  # all prompt: still penalized
    assert out.tolist() == [1.0, -4.0, 1.0, 4.0]
    assert logits.tolist() == [2.0, -2.0, 1.0, 4.0]  # the input is left alone


def test_frequency_and_presence_penalties_read_only_generated_tokens() -> None:
    """OpenAI semantics: logit -= count * frequency + (count > 0) * presence, over this generation's tokens."""
    logits = torch.zeros(4)
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=1.0)
    out = apply_penalties(logits, p, context=[3, 3, 2, 2, 2, 1], generated=4)  # generated: 2, 2, 2, 1
    assert out.tolist() == [0.0, -1.5, -2.5, 0.0]  # token 3 is only in the prompt


def test_penalties_change_the_greedy_pick() -> None:
    """A greedy aggregator stops repeating its favourite token once it is penalized."""
    logits = torch.tensor([0.0, 3.0, 2.5, 0.0])
    assert sample(logits, SamplingParams(), None, [1], 1) == 1
    assert sample(logits, SamplingParams(repetition_penalty=1.3), None, [1], 1) == 2
    assert sample(logits, SamplingParams(frequency_penalty=1.0), None, [1], 1) == 2
    assert sample(logits, SamplingParams(presence_penalty=1.0), None, [1], 1) == 2
    assert sample(logits, SamplingParams(frequency_penalty=1.0), None, [1], 0) == 1  # prompt only: no effect


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability() -> None:
    """min_p=0.5 keeps only tokens at least half as likely as the best one."""
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, min_p=0.5, seed=0)
    gen = torch.Generator().manual_seed(0)
    picks = {sample(logits, params, gen) for _ in range(300)}
    assert picks == {0, 1}


@pytest.mark.parametrize(("field", "value"), [("repetition_penalty", 0.0), ("repetition_penalty", float("nan")),
                                              ("frequency_penalty", 2.5), ("presence_penalty", -3.0),
                                              ("min_p", 1.5)])
def test_bad_values_are_refused_naming_the_field(field: str, value: float) -> None:
    """Each bad value fails on construction, and the message names the field."""
    with pytest.raises(InvalidSamplingError, match=field):
        SamplingParams(**{field: value})


async def test_engine_greedy_with_repetition_penalty_matches_transformers() -> None:
    """The engine hands the sampler the whole context, as transformers' RepetitionPenaltyLogitsProcessor reads it."""
    loaded = tiny_llama()
    ref = tiny_llama().model
    ref.set_attn_implementation("sdpa")
    ref.generation_config.eos_token_id = None
    eng = TransformersEngine(loaded, block_size=4, kv_cache_bytes=4 << 20)
    try:
        rng = random.Random(3)
        prompt = [rng.randrange(1, VOCAB - 1) for _ in range(11)]
        with torch.inference_mode():
            out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, pad_token_id=0, repetition_penalty=1.5)
        want = out[0, len(prompt):].tolist()
        seq = await eng.open(prompt)
        got, _, _ = await collect(eng, seq, SamplingParams(max_tokens=12, ignore_eos=True, repetition_penalty=1.5))
        plain = await eng.open(prompt)
        unpenalized, _, _ = await collect(eng, plain, SamplingParams(max_tokens=12, ignore_eos=True))
        assert got == want
        assert got != unpenalized  # the penalty did something on this prompt
    finally:
        await eng.shutdown()


async def test_penalties_and_min_p_pass_through_http(fake: MisbehavingServer) -> None:
    """OpenAI names for frequency/presence; repetition_penalty (vLLM, SGLang), repeat_penalty (llama.cpp), min_p."""
    tok: Any = fake.state.tokenizer
    eng = HttpEngine(fake.url("ok"), None, tokenizer=tok, backoff_s=0.01)
    try:
        seq = await eng.open(tok.encode("Hello there", add_special_tokens=False))
        params = SamplingParams(max_tokens=3, temperature=0.7, repetition_penalty=1.2, frequency_penalty=0.3,
                                presence_penalty=0.4, min_p=0.05)
        async for _ in eng.generate(seq, params):
            pass
        body = fake.state.requests[-1].body
        assert (body["frequency_penalty"], body["presence_penalty"], body["min_p"]) == (0.3, 0.4, 0.05)
        assert body["repetition_penalty"] == body["repeat_penalty"] == 1.2
        async for _ in eng.generate(seq, SamplingParams(max_tokens=2)):
            pass
        plain = fake.state.requests[-1].body
        assert not {"frequency_penalty", "presence_penalty", "min_p", "repetition_penalty"} & plain.keys()
    finally:
        await eng.shutdown()
