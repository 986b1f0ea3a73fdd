"""TransformersEngine on a tiny random Llama: exactness vs transformers, KV accounting, eviction, sampling, errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from typing import Any

import pytest
import torch

from engine import (
    CapacityError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    SamplingParams,
    Sequence,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, count_model_positions, tiny_llama

VOCAB = 512  # tiny_llama's vocabulary; its EOS is VOCAB - 1
BS = 4  # the tiny_engine fixture's block size
GUARD_S = 60  # a hang fails the test instead of blocking the suite; never reached when the engine works


def greedy(n: int) -> SamplingParams:
    """Greedy decoding of exactly n tokens."""
    return SamplingParams(max_tokens=n, ignore_eos=True)


def rand_tokens(n: int, seed: int) -> list[int]:
    """n random non-EOS ids of the tiny vocabulary."""
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB - 1) for _ in range(n)]


def hf_generate(model: Any, tokens: list[int], n: int) -> list[int]:
    """transformers' own greedy generate() on the whole input."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([tokens]), attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(tokens):].tolist()


def small_engine(blocks: int, **options: Any) -> TransformersEngine:
    """A tiny-model engine whose KV budget holds exactly `blocks` blocks (options: the engine's keywords)."""
    probe = tiny_llama()
    cfg = probe.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_block = 2 * cfg.num_hidden_layers * BS * cfg.num_key_value_heads * head_dim * 4
    return TransformersEngine(probe, block_size=BS, kv_cache_bytes=blocks * per_block, **options)


# ------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("cuts", [(7, 13, 30), (4, 8, 16), (1, 2, 3), (33,)])
async def test_greedy_after_appends_equals_hf_generate(tiny_engine: TransformersEngine, ref_model: Any,
                                                       cuts: tuple[int, ...]) -> None:
    """open + appends (block-aligned or not) + generate == generate() on the concatenated input."""
    tokens = rand_tokens(cuts[-1], seed=sum(cuts))
    seq = await tiny_engine.open(tokens[:cuts[0]])
    for a, b in itertools.pairwise(cuts):
        await tiny_engine.append(seq, tokens[a:b])
    ids, _, reason = await collect(tiny_engine, seq, greedy(12))
    assert ids == hf_generate(ref_model, tokens, 12)
    assert reason == "length"
    assert tiny_engine.tokens(seq) == tokens + ids

    # A second turn: append after generating (the last sampled token's KV is computed lazily), generate again.
    more = rand_tokens(6, seed=99)
    await tiny_engine.append(seq, more)
    ids2, _, _ = await collect(tiny_engine, seq, greedy(8))
    assert ids2 == hf_generate(ref_model, tokens + ids + more, 8)
    await tiny_engine.close(seq)


async def test_generate_twice_without_append_continues(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """Two generations in a row continue the same text as one longer generation."""
    tokens = rand_tokens(10, seed=5)
    seq = await tiny_engine.open(tokens)
    a, _, _ = await collect(tiny_engine, seq, greedy(5))
    b, _, _ = await collect(tiny_engine, seq, greedy(7))
    assert a + b == hf_generate(ref_model, tokens, 12)
    await tiny_engine.close(seq)


# ------------------------------------------------------------------------------------------- Δ accounting


async def test_append_computes_only_delta(tiny_engine: TransformersEngine) -> None:
    """An append of Δ tokens computes Δ (at most Δ + one block), engine-wide and per sequence."""
    seq = await tiny_engine.open(rand_tokens(37, seed=1))
    assert tiny_engine.seq_stats(seq).prefill_computed == 37
    for delta in (1, 3, 4, 9):
        before, eng_before = tiny_engine.seq_stats(seq), tiny_engine.stats()
        with count_model_positions(tiny_engine) as fed:
            await tiny_engine.append(seq, rand_tokens(delta, seed=delta))
        computed = tiny_engine.seq_stats(seq).prefill_computed - before.prefill_computed
        assert computed == delta <= delta + BS
        assert fed.count == delta, "measured at the model"
        assert tiny_engine.stats().prefill_computed - eng_before.prefill_computed == delta

    # After a generation the last sampled token has no KV yet: the next append computes it too (Δ + 1, the
    # extra one counted as a decode token).
    ids, _, _ = await collect(tiny_engine, seq, greedy(5))
    st = tiny_engine.seq_stats(seq)
    assert st.decode_tokens == len(ids) - 1
    with count_model_positions(tiny_engine) as fed:
        await tiny_engine.append(seq, rand_tokens(6, seed=6))
    after = tiny_engine.seq_stats(seq)
    assert fed.count == 7, "measured at the model: Δ plus the sampled token never computed"
    assert after.prefill_computed - st.prefill_computed == 6
    assert after.decode_tokens - st.decode_tokens == 1
    total = after.prefill_computed + after.decode_tokens - st.prefill_computed - st.decode_tokens
    assert total <= 6 + BS
    await tiny_engine.close(seq)


async def test_fork_computes_nothing_and_shares_blocks(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """A fork computes 0 tokens, adds at most one (copied partial) block, and both branches stay exact."""
    tokens = rand_tokens(30, seed=2)  # 7 full blocks + a partial one
    parent = await tiny_engine.open(tokens)
    before = tiny_engine.stats()
    with count_model_positions(tiny_engine) as fed:
        child = await tiny_engine.fork(parent)
    after = tiny_engine.stats()
    assert fed.count == 0, "measured at the model: a fork computes nothing"
    assert tiny_engine.seq_stats(child).prefill_computed == 0
    assert tiny_engine.seq_stats(child).prefill_reused == 30
    assert after.prefill_computed == before.prefill_computed
    per_block = before.kv_bytes_resident // 8  # the parent holds 8 blocks
    added = after.kv_bytes_resident - before.kv_bytes_resident
    assert added == per_block, "only the partial last block is copied; the 7 full ones are shared"
    assert tiny_engine.tokens(child) == tokens

    # Both branches diverge with their own appends and each matches generate() on its own input.
    a, b = rand_tokens(5, seed=3), rand_tokens(3, seed=4)
    await tiny_engine.append(parent, a)
    await tiny_engine.append(child, b)
    pa, _, _ = await collect(tiny_engine, parent, greedy(6))
    cb, _, _ = await collect(tiny_engine, child, greedy(6))
    assert pa == hf_generate(ref_model, tokens + a, 6)
    assert cb == hf_generate(ref_model, tokens + b, 6)

    # A fork of a fully block-aligned sequence copies nothing at all; open(parent=...) appends new tokens.
    aligned = await tiny_engine.open(rand_tokens(16, seed=8))
    before = tiny_engine.stats()
    twin = await tiny_engine.open([7, 8], parent=aligned)
    assert tiny_engine.seq_stats(twin).prefill_computed == 2
    assert tiny_engine.tokens(twin) == [*tiny_engine.tokens(aligned), 7, 8]
    assert tiny_engine.stats().prefill_computed - before.prefill_computed == 2
    for s in (parent, child, aligned, twin):
        await tiny_engine.close(s)


async def test_fork_of_generated_sequence_matches(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """Forking right after a generation (last token sampled, not computed) continues identically."""
    tokens = rand_tokens(9, seed=21)
    seq = await tiny_engine.open(tokens)
    await collect(tiny_engine, seq, greedy(4))
    child = await tiny_engine.fork(seq)
    assert tiny_engine.seq_stats(child).prefill_computed == 0
    rest_parent, _, _ = await collect(tiny_engine, seq, greedy(5))
    rest_child, _, _ = await collect(tiny_engine, child, greedy(5))
    assert rest_parent == rest_child == hf_generate(ref_model, tokens, 9)[4:]
    await tiny_engine.close(seq)
    await tiny_engine.close(child)


async def test_prefix_cache_reuse_across_sequences(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """A new sequence with a cached prefix reuses its full blocks, even after the first sequence is closed."""
    prefix = rand_tokens(32, seed=11)  # 8 full blocks
    a = await tiny_engine.open(prefix + rand_tokens(5, seed=12))
    assert tiny_engine.seq_stats(a).prefill_reused == 0
    tail = rand_tokens(7, seed=13)
    before = tiny_engine.stats()
    with count_model_positions(tiny_engine) as fed:
        b = await tiny_engine.open(prefix + tail)
    st = tiny_engine.seq_stats(b)
    assert (st.prefill_reused, st.prefill_computed) == (32, 7)
    assert fed.count == 7, "measured at the model: the cached prefix is not fed again"
    assert tiny_engine.stats().prefill_reused - before.prefill_reused == 32
    ids, _, _ = await collect(tiny_engine, b, greedy(6))
    assert ids == hf_generate(ref_model, prefix + tail, 6)

    await tiny_engine.close(a)
    await tiny_engine.close(b)
    # Freed blocks keep their prefix until reused; an identical prompt still computes its last token (for logits).
    c = await tiny_engine.open(prefix)
    st = tiny_engine.seq_stats(c)
    assert (st.prefill_reused, st.prefill_computed) == (28, 4)
    ids, _, _ = await collect(tiny_engine, c, greedy(6))
    assert ids == hf_generate(ref_model, prefix, 6)
    await tiny_engine.close(c)


# ------------------------------------------------------------------------------------------- memory budget


async def test_lru_eviction_and_transparent_recompute(ref_model: Any) -> None:
    """Under a small budget the least recently used idle sequence gives back its tail blocks, only as many as
    are lacking, and recomputes just those on next use."""
    eng = small_engine(blocks=16)
    try:
        toks = {name: rand_tokens(24, seed=i) for i, name in enumerate("abc")}  # 6 blocks each
        a = await eng.open(toks["a"])
        b = await eng.open(toks["b"])
        assert eng.stats().evictions == 0
        c = await eng.open(toks["c"])  # 12 + 6 > 16: `a` (least recently used) gives back its last 2 blocks
        st = eng.stats()
        assert st.evictions == 1
        assert st.sequences_resident == 3 and st.sequences_open == 3, "a kept its head"
        assert eng.seq_stats(a).evicted_tokens == 2 * BS and st.evicted_tokens == 2 * BS
        assert st.kv_bytes_resident <= st.kv_bytes_budget
        assert eng.tokens(a) == toks["a"], "an evicted sequence keeps its tokens"

        # Using `a` again recomputes its dropped tail only (b, now the LRU, gives back its own tail).
        extra = rand_tokens(3, seed=7)
        await eng.append(a, extra)
        st_a = eng.seq_stats(a)
        assert st_a.recomputed_after_eviction == 2 * BS, "the kept head of 16 tokens was not recomputed"
        assert st_a.prefill_reused == 0
        assert eng.stats().evictions == 2
        ids, _, _ = await collect(eng, a, greedy(6))
        assert ids == hf_generate(ref_model, toks["a"] + extra, 6)
        ids_c, _, _ = await collect(eng, c, greedy(6))
        assert ids_c == hf_generate(ref_model, toks["c"], 6)
        ids_b, _, _ = await collect(eng, b, greedy(6))  # its tail went too: recomputed on generate
        assert ids_b == hf_generate(ref_model, toks["b"], 6)
        st_b = eng.seq_stats(b)
        assert 0 < st_b.recomputed_after_eviction == st_b.evicted_tokens, "exactly what it gave back"
        st = eng.stats()
        assert st.recomputed_after_eviction == sum(eng.seq_stats(s).recomputed_after_eviction for s in (a, b, c))
        assert eng.stats().kv_bytes_resident <= eng.stats().kv_bytes_budget
        for s in (a, b, c):
            await eng.close(s)
    finally:
        await eng.shutdown()


async def test_capacity_error_leaves_engine_serving(ref_model: Any) -> None:
    """A sequence larger than the whole budget fails with CapacityError; it and others keep working."""
    eng = small_engine(blocks=8)  # 32 tokens of KV
    try:
        with pytest.raises(CapacityError, match="kv_cache_bytes"):
            await asyncio.wait_for(eng.open(rand_tokens(40, seed=1)), GUARD_S)
        tokens = rand_tokens(20, seed=2)
        seq = await eng.open(tokens)
        with pytest.raises(CapacityError):
            await asyncio.wait_for(eng.append(seq, rand_tokens(20, seed=3)), GUARD_S)
        assert eng.tokens(seq) == tokens, "a failed append is rolled back"
        ids, _, _ = await collect(eng, seq, greedy(5))
        assert ids == hf_generate(ref_model, tokens, 5)
        await eng.close(seq)
    finally:
        await eng.shutdown()


async def test_generation_that_outgrows_budget_ends_with_length(ref_model: Any) -> None:
    """A generation that runs out of KV blocks ends with finish_reason 'length' instead of failing."""
    eng = small_engine(blocks=4)  # 16 tokens
    try:
        seq = await eng.open(rand_tokens(10, seed=4))
        ids, _, reason = await collect(eng, seq, greedy(50))
        assert reason == "length"
        assert 0 < len(ids) <= 7
        await eng.close(seq)
    finally:
        await eng.shutdown()


async def test_close_frees_everything(tiny_engine: TransformersEngine) -> None:
    """Closing every sequence (forks included) leaves 0 resident sequences and 0 KV bytes; close is idempotent."""
    a = await tiny_engine.open(rand_tokens(21, seed=1))
    b = await tiny_engine.fork(a)
    c = await tiny_engine.open(rand_tokens(9, seed=2), parent=a)
    st = tiny_engine.stats()
    assert st.sequences_open == 3 and st.sequences_resident == 3 and st.kv_bytes_resident > 0
    for s in (b, a, c):
        await tiny_engine.close(s)
    await tiny_engine.close(a)
    st = tiny_engine.stats()
    assert (st.sequences_open, st.sequences_resident, st.kv_bytes_resident) == (0, 0, 0)


async def test_close_while_generating_ends_stream(tiny_engine: TransformersEngine) -> None:
    """Closing a generating sequence ends its stream with 'abort' and frees its blocks."""
    seq = await tiny_engine.open(rand_tokens(8, seed=3))
    reasons: list[Any] = []
    async with contextlib.aclosing(tiny_engine.generate(seq, greedy(10_000))) as stream:
        async for delta in stream:
            if delta.finish_reason is not None:
                reasons.append(delta.finish_reason)
            elif not reasons:
                await tiny_engine.close(seq)
    assert reasons == ["abort"]
    st = tiny_engine.stats()
    assert (st.sequences_open, st.kv_bytes_resident) == (0, 0)


# ------------------------------------------------------------------------------------------- batching


async def test_concurrent_generates_match_sequential_and_batch(tiny_engine: TransformersEngine) -> None:
    """Four concurrent generations equal their sequential runs and share forward passes."""
    prompts = [rand_tokens(5 + 3 * i, seed=40 + i) for i in range(4)]
    sequential = []
    steps0 = tiny_engine.stats().forward_steps
    for p in prompts:
        s = await tiny_engine.open(p)
        sequential.append((await collect(tiny_engine, s, greedy(10)))[0])
        await tiny_engine.close(s)
    steps_seq = tiny_engine.stats().forward_steps - steps0

    seqs = [await tiny_engine.open(p) for p in prompts]
    steps0 = tiny_engine.stats().forward_steps
    results = await asyncio.gather(*(collect(tiny_engine, s, greedy(10)) for s in seqs))
    steps_conc = tiny_engine.stats().forward_steps - steps0
    assert [r[0] for r in results] == sequential
    assert all(r[2] == "length" for r in results)
    assert steps_conc < steps_seq / 2, f"{steps_conc} steps for 4 concurrent streams vs {steps_seq} sequential"
    for s in seqs:
        await tiny_engine.close(s)


async def test_prefill_and_decode_share_steps(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """A long prefill arriving while another sequence decodes is chunked in beside it; both stay exact."""
    tiny_engine.max_tokens_per_step = 16
    try:
        short = rand_tokens(6, seed=50)
        long = rand_tokens(200, seed=51)
        s1 = await tiny_engine.open(short)

        async def late_open() -> list[int]:
            s2 = await tiny_engine.open(long)
            ids = (await collect(tiny_engine, s2, greedy(4)))[0]
            await tiny_engine.close(s2)
            return ids

        (ids1, _, _), ids2 = await asyncio.gather(collect(tiny_engine, s1, greedy(20)), late_open())
        assert ids1 == hf_generate(ref_model, short, 20)
        assert ids2 == hf_generate(ref_model, long, 4)
        await tiny_engine.close(s1)
    finally:
        tiny_engine.max_tokens_per_step = 512


# ------------------------------------------------------------------------------------------- sampling


async def test_seed_reproducible_and_changes_output(tiny_engine: TransformersEngine) -> None:
    """Temperature sampling with a seed repeats exactly; another seed gives another sample."""
    base = await tiny_engine.open(rand_tokens(12, seed=60))
    outs = []
    for seed in (7, 7, 8):
        s = await tiny_engine.fork(base)
        outs.append((await collect(tiny_engine, s, SamplingParams(max_tokens=16, temperature=1.0, seed=seed,
                                                                   ignore_eos=True)))[0])
        await tiny_engine.close(s)
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    await tiny_engine.close(base)


async def test_top_k_one_and_tiny_top_p_are_greedy(tiny_engine: TransformersEngine) -> None:
    """top_k=1, or top_p small enough to keep one token, reduce temperature sampling to greedy."""
    base = await tiny_engine.open(rand_tokens(12, seed=61))
    outs = []
    for params in (greedy(10), SamplingParams(max_tokens=10, temperature=1.5, top_k=1, seed=1, ignore_eos=True),
                   SamplingParams(max_tokens=10, temperature=1.5, top_p=1e-6, seed=1, ignore_eos=True)):
        s = await tiny_engine.fork(base)
        outs.append((await collect(tiny_engine, s, params))[0])
        await tiny_engine.close(s)
    assert outs[0] == outs[1] == outs[2]
    await tiny_engine.close(base)


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=24, temperature=2.0, top_k=3, seed=3, ignore_eos=True),
    SamplingParams(max_tokens=24, temperature=2.0, top_p=0.3, seed=4, ignore_eos=True),
])
async def test_top_k_top_p_keep_tokens_inside_the_allowed_set(tiny_engine: TransformersEngine, ref_model: Any,
                                                              params: SamplingParams) -> None:
    """Every sampled token lies in the top-k / nucleus of transformers' own logits at its position."""
    prompt = rand_tokens(10, seed=62)
    seq = await tiny_engine.open(prompt)
    ids, _, _ = await collect(tiny_engine, seq, params)
    full = prompt + ids
    with torch.inference_mode():
        logits = ref_model(torch.tensor([full])).logits[0].float()
    tol = 1e-4
    for i, tok in enumerate(ids):
        row = logits[len(prompt) + i - 1] / params.temperature
        if params.top_k:
            kth = torch.topk(row, params.top_k).values[-1]
            assert row[tok] >= kth - tol, f"token {i} outside the top {params.top_k}"
        else:
            probs = torch.softmax(row, -1)
            mass_before = probs[probs > probs[tok] + tol].sum()
            assert mass_before < params.top_p + tol, f"token {i} outside the top_p={params.top_p} nucleus"
    assert len(set(ids)) > 1, "sampling at temperature 2 should not be stuck on one token"
    await tiny_engine.close(seq)


async def test_stop_string_is_trimmed(tiny_engine: TransformersEngine) -> None:
    """Generation stops at the first occurrence of a stop string, which is left out of the text."""
    base = await tiny_engine.open(rand_tokens(12, seed=63))
    s = await tiny_engine.fork(base)
    _, full_text, _ = await collect(tiny_engine, s, greedy(40))
    await tiny_engine.close(s)
    visible = full_text.strip()
    assert len(visible) >= 6, f"tiny model produced too little text to test: {full_text!r}"
    mid = full_text.index(visible[len(visible) // 2])
    stop = full_text[mid:mid + 2]
    expected = full_text[:full_text.index(stop)]

    s = await tiny_engine.fork(base)
    ids, text, reason = await collect(tiny_engine, s, SamplingParams(max_tokens=40, stop=("\x00never", stop),
                                                                     ignore_eos=True))
    assert (text, reason) == (expected, "stop")
    assert stop not in text
    assert tiny_engine.tokens(s)[-len(ids):] == ids
    await tiny_engine.close(s)
    await tiny_engine.close(base)


async def test_stop_token_ids_and_max_tokens(tiny_engine: TransformersEngine) -> None:
    """A stop token ends generation (and is the last token); max_tokens ends it with 'length'."""
    base = await tiny_engine.open(rand_tokens(12, seed=64))
    s = await tiny_engine.fork(base)
    full, _, reason = await collect(tiny_engine, s, greedy(12))
    assert (len(full), reason) == (12, "length")
    await tiny_engine.close(s)

    stop_tok = full[5]
    s = await tiny_engine.fork(base)
    ids, _, reason = await collect(tiny_engine, s, SamplingParams(max_tokens=12, stop_token_ids=(stop_tok,),
                                                                  ignore_eos=True))
    assert reason == "stop"
    assert ids == full[:full.index(stop_tok) + 1]
    await tiny_engine.close(s)
    await tiny_engine.close(base)


# ------------------------------------------------------------------------------------------- cancellation


async def test_breaking_out_cancels_generation(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """Leaving the iterator early stops decoding; the sequence is idle and exact for the next turn."""
    prompt = rand_tokens(10, seed=70)
    seq = await tiny_engine.open(prompt)
    got: list[int] = []
    async for delta in tiny_engine.generate(seq, greedy(10_000)):
        got.extend(delta.token_ids)
        if len(got) >= 3:
            break  # a plain break, no aclose(): the engine must notice at once
    decoded = tiny_engine.stats().decode_tokens
    held = tiny_engine.tokens(seq)
    assert held[:len(prompt) + 3] == prompt + got
    more = rand_tokens(4, seed=71)
    await tiny_engine.append(seq, more)  # would raise SequenceBusyError if the generation were still running
    assert tiny_engine.stats().decode_tokens - decoded <= 1, "decoding went on after the consumer left"
    ids, _, _ = await collect(tiny_engine, seq, greedy(5))
    assert ids == hf_generate(ref_model, held + more, 5)

    # Explicit aclose() (what contextlib.aclosing does) cancels the same way.
    stream = tiny_engine.generate(seq, greedy(10_000))
    first = await anext(stream)
    await stream.aclose()
    assert first.finish_reason is None
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await tiny_engine.append(seq, more)
    await tiny_engine.close(seq)


async def test_abort_and_task_cancel(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """abort() ends a running stream with 'abort'; cancelling the consuming task frees the sequence too."""
    seq = await tiny_engine.open(rand_tokens(10, seed=72))
    started = asyncio.Event()
    reasons: list[Any] = []

    async def consume() -> None:
        async for delta in tiny_engine.generate(seq, greedy(10_000)):
            started.set()
            reasons.append(delta.finish_reason)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), GUARD_S)
    await tiny_engine.abort(seq)
    await asyncio.wait_for(task, GUARD_S)
    assert reasons[-1] == "abort" and all(r is None for r in reasons[:-1])
    await tiny_engine.abort(seq)  # idle: no-op

    started.clear()
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), GUARD_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = tiny_engine.tokens(seq)
    ids, _, _ = await collect(tiny_engine, seq, greedy(3))  # idle again: a new generation starts
    assert ids == hf_generate(ref_model, held, 3)
    await tiny_engine.close(seq)


# ------------------------------------------------------------------------------------------- bad input


async def test_bad_input_raises_typed_errors_and_engine_keeps_serving(tiny_engine: TransformersEngine,
                                                                      ref_model: Any) -> None:
    """Every misuse raises a typed EngineError naming the problem; a healthy sequence is unaffected."""
    eng = tiny_engine
    prompt = rand_tokens(10, seed=80)
    good = await eng.open(prompt)
    expected = hf_generate(ref_model, prompt, 12)

    with pytest.raises(InvalidTokensError, match="empty"):
        await eng.open([])
    with pytest.raises(InvalidTokensError, match="exceeds"):
        await eng.open([1] * (eng.max_model_len + 1))
    with pytest.raises(InvalidTokensError, match="vocabulary"):
        await eng.open([1, VOCAB + 5])
    with pytest.raises(InvalidTokensError, match="vocabulary"):
        await eng.open([-1])
    with pytest.raises(InvalidTokensError, match="list of token ids"):
        await eng.open("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidTokensError, match="empty"):
        await eng.append(good, [])
    with pytest.raises(InvalidTokensError, match="exceeds"):
        await eng.append(good, [1] * (eng.max_model_len - 5))
    with pytest.raises(UnknownSequenceError, match="no sequence"):
        await eng.append(Sequence(10_000, eng.id), [1])
    with pytest.raises(UnknownSequenceError, match="another engine"):
        await eng.append(Sequence(good.id, eng.id + 1000), [1])
    with pytest.raises(UnknownSequenceError):
        eng.generate("not a handle", greedy(1))  # type: ignore[arg-type]

    closed = await eng.open([1, 2, 3])
    await eng.close(closed)
    with pytest.raises(SequenceClosedError, match="closed"):
        await eng.append(closed, [4])
    with pytest.raises(SequenceClosedError):
        eng.generate(closed, greedy(1))
    with pytest.raises(SequenceClosedError):
        await eng.fork(closed)

    for bad in (dict(max_tokens=0), dict(max_tokens=1.5), dict(temperature=-1.0), dict(top_p=0.0),
                dict(top_p=1.5), dict(top_k=-2), dict(stop=("",)), dict(stop_token_ids=(-3,))):
        with pytest.raises(InvalidSamplingError):
            SamplingParams(**bad)  # type: ignore[arg-type]

    # Generating on a sequence that is already generating; it goes on and finishes exactly.
    got: list[int] = []
    async with contextlib.aclosing(eng.generate(good, greedy(12))) as stream:
        async for delta in stream:
            got.extend(delta.token_ids)
            if delta.finish_reason is not None:
                break
            with pytest.raises(SequenceBusyError, match="generating"):
                eng.generate(good, greedy(1))
            with pytest.raises(SequenceBusyError):
                await eng.append(good, [1])
            with pytest.raises(SequenceBusyError):
                await eng.fork(good)
    assert got == expected
    assert eng.tokens(good) == prompt + expected
    await eng.close(good)
    assert eng.stats().sequences_open == 0


async def test_stopped_engine_refuses_work() -> None:
    """After shutdown every call raises EngineStoppedError instead of hanging."""
    eng = TransformersEngine(tiny_llama(), block_size=BS, kv_cache_bytes=1 << 20)
    seq = await eng.open([1, 2, 3])
    await eng.shutdown()
    with pytest.raises(EngineStoppedError):
        await eng.open([1, 2])
    with pytest.raises(EngineStoppedError):
        await eng.append(seq, [4])
    with pytest.raises(EngineStoppedError):
        eng.generate(seq, greedy(2))
