"""Prompt lookup: which tokens the proposer drafts, how a draft is verified, and both local engines using it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from engine import Grammar, JsonSchema, SamplingParams
from engine.detokenizer import Detokenizer
from engine.generation import Generation
from engine.prompt_lookup import PromptLookup, verify_draft
from engine.transformers_engine import TransformersEngine
from tests.conftest import chat_ids, collect, tiny_llama


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


@pytest.fixture(scope="module")
def tokenizer(default_model_path: str) -> Any:
    """The default model's tokenizer (a generation's detokenizer needs one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


def _generation(tokenizer: Any, params: SamplingParams) -> Generation:
    return Generation(params, None, Detokenizer(tokenizer, params.stop))


def test_greedy_generations_get_drafts_as_long_as_the_copied_run_cut_at_stops_and_budget(tokenizer: Any) -> None:
    tok = tokenizer
    pl = PromptLookup(max_draft=4, max_ngram=2, min_ngram=1)
    greedy = _generation(tok, SamplingParams(max_tokens=50))
    # (1, 2) matched at 1, and the token before it agrees too: a run of 3 stands behind the guess.
    tokens = [5, 1, 2, 3, 4, 9, 6, 7, 5, 1, 2]
    assert pl.propose(tokens, greedy, room=10, max_model_len=100, stop_ids=frozenset()) == (3, 4, 9)
    assert pl.propose(tokens, greedy, room=10, max_model_len=100, stop_ids=frozenset({9})) == (3, 4)
    assert pl.propose(tokens, greedy, room=2, max_model_len=100, stop_ids=frozenset()) == (3, 4)
    assert pl.propose(tokens, greedy, room=10, max_model_len=len(tokens) + 2, stop_ids=frozenset()) == (3,)
    # A bare two-token match guesses two tokens, though four followed it.
    assert pl.propose([1, 2, 3, 4, 9, 6, 8, 1, 2], greedy, room=10, max_model_len=100,
                      stop_ids=frozenset()) == (3, 4)
    short = _generation(tok, SamplingParams(max_tokens=1))  # the step's own token is the whole budget
    assert pl.propose(tokens, short, room=10, max_model_len=100, stop_ids=frozenset()) == ()
    sampled = _generation(tok, SamplingParams(max_tokens=50, temperature=0.8, seed=1))
    assert pl.propose(tokens, sampled, room=10, max_model_len=100, stop_ids=frozenset()) == ()


def test_verification_keeps_the_prefix_greedy_sampling_reproduces(tokenizer: Any) -> None:
    """Row i holds the logits after draft token i-1: accepted while its argmax is the next draft token."""
    gen = _generation(tokenizer, SamplingParams())
    rows = torch.full((4, 16), -1.0)
    for i, best in enumerate([5, 6, 2, 8]):
        rows[i, best] = 1.0
    assert verify_draft(rows, (5, 6, 7), gen, [1, 2]) == ([5, 6], 2)  # 7 was wrong: 2 is drawn in its place
    assert verify_draft(rows, (5, 6, 2), gen, [1, 2]) == ([5, 6, 2], 8)  # all right: the last row adds one more
    assert verify_draft(rows[:1], (), gen, [1, 2]) == ([], 5)  # no draft: plain greedy sampling


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


# ------------------------------------------------------------------------------------------- in the llama.cpp engine

TOOL_PROMPT = ('Call open_file with path "/home/user/projects/moa-stream/engine/llamacpp_engine/scheduler.py" '
               'and mode "read-only". Answer in JSON.')
OPEN_FILE = JsonSchema.of({"type": "object", "properties": {"path": {"type": "string"}, "mode": {"type": "string"}},
                           "required": ["path", "mode"]})


async def test_llamacpp_greedy_output_is_the_same_with_prompt_lookup_on_and_off_batched() -> None:
    """On the default GGUF, a greedy sequence repeating its prompt and a grammar-constrained tool call, batched
    with a sampled one: both greedy outputs (and a continuation after an append) equal the run without prompt
    lookup, drafts were accepted in fewer llama_decode calls, and the rejected drafts left no KV behind.

    The sampled neighbour writes as many tokens either way, but not always the same ones: the drafts change which
    KV cells its tokens land in, llama.cpp's CPU flash attention sums a sequence's cells in cell order (with V
    accumulated in f16), and its logits moved by up to ~1 on llama-cpp-python 0.3.36 (0.3.35's build happened to
    draw the same tokens). llama.cpp promises no bit-equality across cell layouts; the greedy rows here have
    margins far above that, and a seeded draw is the same batched and alone in one layout
    (tests/engine/test_batch_sampler.py)."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    params = [SamplingParams(max_tokens=60), SamplingParams(max_tokens=16, temperature=0.8, seed=3),
              SamplingParams(max_tokens=50, structured=OPEN_FILE)]
    runs = {}
    for lookup in (None, PromptLookup()):
        eng = LlamaCppEngine(kv_cells=2048, n_seq_max=8, prompt_lookup=lookup)
        calls = [0]
        real = eng.context.decode

        def counting(tokens: Any, real: Any = real, calls: list[int] = calls) -> Any:
            calls[0] += 1
            return real(tokens)

        eng.context.decode = counting  # counted where llama_decode is called
        try:
            prompts = [chat_ids(eng, f"Repeat this list exactly, twice: {text}"),
                       chat_ids(eng, "Write a short poem about rain."), chat_ids(eng, TOOL_PROMPT)]
            seqs = [await eng.open(p) for p in prompts]
            before = calls[0]
            outs = await asyncio.gather(*(collect(eng, s, q) for s, q in zip(seqs, params, strict=True)))
            decodes = calls[0] - before
            stats = eng.stats()
            for seq in seqs:  # the KV of each sequence ends at its last computed token, in llama.cpp and the ledger
                s = eng._table.get(seq)
                assert eng.context.seq_pos_max(s.slot) == s.num_computed - 1 == len(s.cells) - 1
            await eng.append(seqs[0], eng.tokenizer.encode(" Once more:", add_special_tokens=False))
            more = await collect(eng, seqs[0], SamplingParams(max_tokens=12))
            runs[lookup is not None] = (outs, more, decodes, stats)
        finally:
            await eng.shutdown()
    (off, off_more, off_decodes, off_stats), (on, on_more, on_decodes, on_stats) = runs[False], runs[True]
    assert (on[0], on[2], on_more) == (off[0], off[2], off_more)  # the greedy and the grammar-constrained rows
    assert len(on[1][0]) == len(off[1][0]) == 16 and on[1][2] == off[1][2] == "length"  # the sampled neighbour
    assert off_stats.draft_tokens == 0 and on_stats.draft_tokens > on_stats.draft_accepted > 0
    assert on_stats.decode_tokens == off_stats.decode_tokens
    assert on_decodes < off_decodes


async def test_llamacpp_drafts_use_only_free_cells_and_never_evict() -> None:
    """A generation running out of KV beside a pinned sequence: drafts shrink to the free cells, nothing is
    evicted, and it ends ("length") on the same tokens as without prompt lookup."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    runs = {}
    for lookup in (None, PromptLookup()):
        eng = LlamaCppEngine(kv_cells=256, n_seq_max=4, prompt_lookup=lookup)
        try:
            other = await eng.open(list(range(1000, 1150)))  # no prefix in common: 150 cells of its own
            await eng.pin(other)
            seq = await eng.open(chat_ids(eng, f"Repeat this list exactly, twice: {text}"))
            out = await collect(eng, seq, SamplingParams(max_tokens=150, ignore_eos=True))
            stats = eng.stats()
            assert stats.evictions == 0 and eng.is_resident(other)
            s = eng._table.get(seq)
            assert eng.context.seq_pos_max(s.slot) == s.num_computed - 1 == len(s.cells) - 1
            runs[lookup is not None] = (out, stats)
        finally:
            await eng.shutdown()
    (off, _), (on, on_stats) = runs[False], runs[True]
    assert on == off and on[2] == "length" and len(on[0]) < 150
    assert on_stats.draft_accepted > 0
