"""The prompt-lookup proposer on its own: which tokens it drafts from a sequence's earlier text."""

from __future__ import annotations

import asyncio

import pytest

from engine import Grammar, SamplingParams
from engine.prompt_lookup import PromptLookup
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, tiny_llama


def test_drafts_what_followed_the_latest_match_of_the_longest_suffix() -> None:
    pl = PromptLookup(max_draft=3, max_ngram=3, min_ngram=1)
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 1, 2, 9, 6, 7, 3, 4, 6, 7]
    # Suffix (6, 7) occurs at 1 and 6; the latest (6) wins: 3, 4, 6 followed it.
    assert pl.draft(tokens) == [3, 4, 6]
    # A longer suffix beats a shorter one: (9, 6, 7) occurs before at 5 only; 8, 9, 6 followed it.
    assert pl.draft([*tokens[:8], 8, 9, 6, 7]) == [8, 9, 6]


def test_no_match_or_no_room_drafts_nothing() -> None:
    pl = PromptLookup(max_draft=4, max_ngram=3, min_ngram=2)
    assert pl.draft([1, 2, 3, 4]) == []
    assert pl.draft([1, 2, 1, 2], limit=0) == []
    assert pl.draft([1, 2, 3, 1, 2], limit=1) == [3]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup(min_ngram=3, max_ngram=2)


# ------------------------------------------------------------------------------------------- in the engine


async def _generate_all(eng, prompts, params_list):
    async def one(prompt, params):
        seq = await eng.open(prompt)
        ids, _, reason = await collect(eng, seq, params)
        await eng.close(seq)
        return ids, reason

    return await asyncio.gather(*(one(p, q) for p, q in zip(prompts, params_list, strict=True)))


async def test_greedy_output_is_the_same_with_prompt_lookup_on_and_off_batched() -> None:
    """Four greedy sequences (one under a grammar, one sampled) batched together, with drafts verified in the
    same passes: every output equals the run without prompt lookup, and drafts were really accepted."""

    # Repetitive prompts: the random model's greedy continuation repeats them, so lookups hit.
    prompts = [[7, 8, 9, 10 + i] * 6 for i in range(4)]
    params = [SamplingParams(max_tokens=24, ignore_eos=True),
              SamplingParams(max_tokens=24, ignore_eos=True, repetition_penalty=1.2),
              SamplingParams(max_tokens=24, ignore_eos=True, structured=Grammar('root ::= ("a" | "b" | "c")+')),
              SamplingParams(max_tokens=24, ignore_eos=True, temperature=0.8, seed=5)]
    runs = {}
    for lookup in (None, PromptLookup(max_draft=6)):
        eng = TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20, prompt_lookup=lookup)
        try:
            runs[lookup is not None] = (await _generate_all(eng, prompts, params), eng.stats())
        finally:
            await eng.shutdown()
    (off, off_stats), (on, on_stats) = runs[False], runs[True]
    assert on == off
    assert off_stats.draft_tokens == 0 and on_stats.draft_accepted > 0
    assert on_stats.decode_tokens == off_stats.decode_tokens


async def test_the_default_model_repeating_text_accepts_drafts_and_writes_the_same(engine) -> None:
    """On the real model, greedy output copying the prompt is identical with prompt lookup, in fewer passes."""

    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    prompt = list(engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Repeat this list exactly, twice: {text}"}],
        add_generation_prompt=True, tokenize=True, return_dict=False))
    params = SamplingParams(max_tokens=40)
    seq = await engine.open(prompt)
    plain, _, _ = await collect(engine, seq, params)
    await engine.close(seq)
    fast = TransformersEngine(engine._loaded, prompt_lookup=PromptLookup())
    try:
        seq = await fast.open(prompt)
        drafted, _, _ = await collect(fast, seq, params)
        stats = fast.stats()
    finally:
        await fast.shutdown()
    assert drafted == plain
    assert stats.draft_accepted > 0 and stats.forward_steps < len(plain)
