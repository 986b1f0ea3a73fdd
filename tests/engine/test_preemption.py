"""Recompute preemption on both local engines: concurrent generations that do not fit the KV budget together
(but each does alone) all finish as they would alone, the younger ones giving their KV to the older ones and
resuming by recompute; only a sequence too big for the budget by itself is cut, with an error that says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import CapacityError, SamplingParams
from engine.llamacpp_engine import LlamaCppEngine
from tests.conftest import chat_ids, collect
from tests.engine.test_transformers_engine_tiny import BS, greedy, hf_generate, rand_tokens, small_engine

GUARD_S = 120  # a stalled or starving generation fails the test instead of hanging the suite


async def run_all(eng: Any, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[list[int], Any]]:
    """Open every prompt, then run one generation on each, all at once: (token ids, finish reason) each."""
    seqs = [await eng.open(p) for p in prompts]
    out = await asyncio.wait_for(asyncio.gather(*(collect(eng, s, p) for s, p in zip(seqs, params, strict=True))),
                                 GUARD_S)
    for s in seqs:
        await eng.close(s)
    return [(ids, reason) for ids, _, reason in out]


async def run_alone(eng: Any, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[list[int], Any]]:
    """The same generations one after the other, each with the engine to itself."""
    out = []
    for p, sp in zip(prompts, params, strict=True):
        seq = await eng.open(p)
        ids, _, reason = await collect(eng, seq, sp)
        await eng.close(seq)
        out.append((ids, reason))
    return out


# ------------------------------------------------------------------------------------------- transformers


async def test_concurrent_generations_over_budget_finish_as_alone(ref_model: Any) -> None:
    """Four greedy generations of 24 tokens on 10-token prompts need 36 blocks together, the budget holds 12
    (each needs 9 alone): every one finishes with its full length and the tokens it writes alone."""
    eng = small_engine(blocks=12)
    try:
        prompts = [rand_tokens(10, seed=50 + i) for i in range(4)]
        params = [greedy(24)] * 4
        together = await run_all(eng, prompts, params)
        st = eng.stats()
        assert st.preemptions > 0, "the budget was too small for all four: someone must have been preempted"
        alone = await run_alone(eng, prompts, params)
        assert together == alone
        assert all(len(ids) == 24 and reason == "length" for ids, reason in together)
        for (ids, _), p in zip(together, prompts, strict=True):
            assert ids == hf_generate(ref_model, p, 24)
        assert eng.stats().sequences_open == 0
    finally:
        await eng.shutdown()


async def test_preempted_sampled_generations_draw_the_same_tokens() -> None:
    """Seeded sampling comes out as it does alone: a preempted generation's random draws are neither repeated
    nor skipped when it resumes."""
    eng = small_engine(blocks=12)
    try:
        prompts = [rand_tokens(12, seed=60 + i) for i in range(3)]
        params = [SamplingParams(max_tokens=22, temperature=1.0, seed=7 + i, ignore_eos=True) for i in range(3)]
        together = await run_all(eng, prompts, params)
        assert eng.stats().preemptions > 0
        assert together == await run_alone(eng, prompts, params)
    finally:
        await eng.shutdown()


async def test_older_generation_keeps_its_kv_and_the_younger_resumes_first_in_first_out() -> None:
    """The generation that started first is never preempted for a younger one; younger ones all finish."""
    eng = small_engine(blocks=12)
    try:
        seqs = [await eng.open(rand_tokens(10, seed=70 + i)) for i in range(3)]
        first = asyncio.ensure_future(collect(eng, seqs[0], greedy(26)))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(collect(eng, s, greedy(20))) for s in seqs[1:]]
        results = await asyncio.wait_for(asyncio.gather(first, *rest), GUARD_S)
        assert [len(ids) for ids, _, _ in results] == [26, 20, 20]
        assert eng.stats().preemptions > 0
        assert eng.seq_stats(seqs[0]).recomputed_after_eviction == 0, "the oldest generation kept its KV"
        assert any(eng.seq_stats(s).recomputed_after_eviction > 0 for s in seqs[1:])
    finally:
        await eng.shutdown()


async def test_appends_and_generations_share_a_tight_budget(ref_model: Any) -> None:
    """An append racing generations is work like them: whoever arrived later gives its KV back, and every
    result is what it is alone (the appended sequence then writes what transformers writes on its tokens)."""
    eng = small_engine(blocks=12)
    try:
        prompts = [rand_tokens(10, seed=100 + i) for i in range(2)]
        gens = [await eng.open(p) for p in prompts]
        base, delta = rand_tokens(8, seed=102), rand_tokens(16, seed=103)
        appended = await eng.open(base)
        runs = [asyncio.ensure_future(collect(eng, s, greedy(20))) for s in gens]
        await asyncio.sleep(0)
        await asyncio.wait_for(eng.append(appended, delta), GUARD_S)
        results = await asyncio.wait_for(asyncio.gather(*runs), GUARD_S)
        assert eng.stats().preemptions > 0
        for (ids, _, reason), p in zip(results, prompts, strict=True):
            assert (ids, reason) == (hf_generate(ref_model, p, 20), "length")
        ids, _, _ = await collect(eng, appended, greedy(6))
        assert ids == hf_generate(ref_model, base + delta, 6)
    finally:
        await eng.shutdown()


async def test_a_generation_too_big_for_the_budget_alone_is_cut_the_others_finish(ref_model: Any) -> None:
    """A generation whose own context outgrows the whole budget ends with "length" at the budget (it preempts
    the others first); a concurrent one that fits alone still finishes in full and exact."""
    eng = small_engine(blocks=8)  # 32 tokens of KV
    try:
        big = await eng.open(rand_tokens(20, seed=80))
        small_prompt = rand_tokens(6, seed=81)
        small = await eng.open(small_prompt)
        big_run = asyncio.ensure_future(collect(eng, big, greedy(40)))
        await asyncio.sleep(0)
        small_run = asyncio.ensure_future(collect(eng, small, greedy(10)))
        (big_ids, _, big_reason), (small_ids, _, small_reason) = await asyncio.wait_for(
            asyncio.gather(big_run, small_run), GUARD_S)
        assert big_reason == "length" and 0 < len(big_ids) <= 32 - 20 + 1 < 40  # its last token needs no KV
        assert (small_ids, small_reason) == (hf_generate(ref_model, small_prompt, 10), "length")
        with pytest.raises(CapacityError, match=r"budget holds 32.*raise kv_cache_bytes"):
            await asyncio.wait_for(eng.open(rand_tokens(40, seed=82)), GUARD_S)
    finally:
        await eng.shutdown()


async def test_pinned_sequence_is_never_preempted() -> None:
    """A pinned idle sequence keeps its KV while concurrent generations preempt each other around it; an open
    that could only fit by taking the pinned KV waits for the pin, and past `pin_wait_s` is refused with an
    error naming the pin."""
    eng = small_engine(blocks=16, pin_wait_s=0.2)
    try:
        pinned = await eng.open(rand_tokens(16, seed=90))  # 4 blocks
        await eng.pin(pinned)
        prompts = [rand_tokens(10, seed=91 + i) for i in range(3)]
        params = [greedy(22)] * 3  # 8 blocks each alone; 12 blocks are left beside the pinned sequence
        together = await run_all(eng, prompts, params)
        assert eng.stats().preemptions > 0
        assert together == await run_alone(eng, prompts, params)
        await eng.append(pinned, [3])
        assert eng.seq_stats(pinned).recomputed_after_eviction == 0, "the pinned sequence kept its KV"

        with pytest.raises(CapacityError, match=r"pinned sequences \[\d+\]"):
            await asyncio.wait_for(eng.open(rand_tokens(13 * BS, seed=95)), GUARD_S)
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
async def roomy() -> AsyncIterator[LlamaCppEngine]:
    """A llama.cpp engine with room for everything: the reference each generation alone."""
    pytest.importorskip("llama_cpp")
    eng = LlamaCppEngine(kv_cells=2048, n_seq_max=8)
    yield eng
    await eng.shutdown()


# How far below the top a token llama.cpp wrote under pressure may sit in the unpressured run (nats). Flash attention
# on the CPU sums a sequence's KV cells in cache order, so KV recomputed into freed cells (after a tail eviction or
# preemption, or on any churned cache) moves this model's logits by up to ~1.0 (max over the vocabulary; measured
# against the same decode with the cells in order): greedy output may flip where the top two are closer than that.
NEAR_TIE_NATS = 0.5


async def check_same_or_near_tie(eng: LlamaCppEngine, prompt: list[int], alone: list[int], together: list[int]) -> None:
    """together is alone, or the first token where they part was a near-tie in the run alone."""
    i = next((k for k, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b), None)
    if i is None:
        return
    seq = await eng.open(prompt + alone[:i])
    try:
        (best,), (took,) = await eng.score(seq, [alone[i]]), await eng.score(seq, [together[i]])
    finally:
        await eng.close(seq)
    assert best - took < NEAR_TIE_NATS, f"token {i}: {together[i]} is {best - took:.2f} nats below {alone[i]}"


async def test_llamacpp_concurrent_generations_over_budget_finish_as_alone(roomy: LlamaCppEngine) -> None:
    """On the default GGUF: five greedy chat generations that together need more cells than the budget, each
    fitting alone, all finish with their full length, preempted ones giving back only their tail cells; each
    writes the tokens it writes alone, or parts from them only at a near-tie (see NEAR_TIE_NATS)."""
    n = 32
    prompts = [chat_ids(roomy, q) for q in ("Name three colors.", "What is two plus two?", "Write a haiku about rain.",
                                        "Who wrote Hamlet?", "What is the capital of France?")]
    params = [SamplingParams(max_tokens=n, ignore_eos=True)] * len(prompts)
    alone = await run_alone(roomy, prompts, params)
    shared = min(next((i for i, t in enumerate(p) if t != prompts[0][i]), len(p)) for p in prompts[1:])
    together_cells = shared + sum(len(p) - shared + n for p in prompts)
    budget = max(len(p) for p in prompts) + n + 16
    assert budget < together_cells * 0.7, (budget, together_cells)
    eng = LlamaCppEngine(kv_cells=budget, n_seq_max=8, max_tokens_per_step=64)
    try:
        together = await run_all(eng, prompts, params)
        st = eng.stats()
        assert st.preemptions > 0
        assert 0 < st.evicted_tokens < st.preemptions * max(len(p) for p in prompts), "victims kept their heads"
        assert st.recomputed_after_eviction <= st.evicted_tokens
        assert all(len(ids) == n and reason == "length" for ids, reason in together)
        for p, (a, _), (t, _) in zip(prompts, alone, together, strict=True):
            await check_same_or_near_tie(roomy, p, a, t)
    finally:
        await eng.shutdown()


async def test_llamacpp_generation_that_only_pinned_kv_could_hold_is_cut_with_a_clear_error() -> None:
    """The context caps a sequence at the cell budget, so on llama.cpp only pinned KV can leave a sequence too
    big: once it has waited `pin_wait_s` for the pin, its generation ends with "length" where the cells run out,
    and a prompt that cannot fit fails with a CapacityError naming the pin and what to raise."""
    pytest.importorskip("llama_cpp")
    eng = LlamaCppEngine(kv_cells=128, n_seq_max=4, pin_wait_s=0.2)
    try:
        pinned = await eng.open(list(range(1000, 1060)))
        await eng.pin(pinned)
        seq = await eng.open(list(range(2000, 2040)))
        ids, _, reason = await collect(eng, seq, SamplingParams(max_tokens=60, ignore_eos=True))
        assert reason == "length" and 0 < len(ids) <= 128 - 60 - 40 + 1
        assert eng.is_resident(pinned)
        with pytest.raises(CapacityError, match=r"raise kv_cells; pinned sequences \[\d+\]"):
            await eng.open(list(range(3000, 3080)))
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- waiting for pins


async def pinned_kv_is_waited_for(eng: Any, pinned_tokens: list[int], big: list[int], release: str) -> None:
    """`big` fits only with some of the pinned sequence's KV: its open waits (never refused, never admitted)
    while the pin holds, and completes once the pin ends (`release`: "unpin", or "ttl" for a pin of 0.3 s that
    nobody lifts), the formerly pinned sequence giving back KV for it."""
    pinned = await eng.open(pinned_tokens)
    await eng.pin(pinned, ttl=0.3 if release == "ttl" else None)
    opening = asyncio.create_task(eng.open(big))
    for _ in range(20):  # lets the engine loop look at the open (event-loop turns, not time)
        await asyncio.sleep(0)
    if release == "unpin":
        assert not opening.done(), "the open was refused or admitted while the pin held the KV"
        await eng.unpin(pinned)
    seq = await asyncio.wait_for(opening, GUARD_S)  # a TTL's end wakes the engine by itself
    assert eng.seq_stats(pinned).evicted_tokens > 0
    assert eng.tokens(seq) == big
    assert eng.stats().preemptions == 0


@pytest.mark.parametrize("release", ["unpin", "ttl"])
async def test_work_waits_for_a_pin_to_end(release: str) -> None:
    """Transformers engine, 16 blocks: 8 pinned, an open of 12 waits for the pin."""
    eng = small_engine(blocks=16)
    try:
        await pinned_kv_is_waited_for(eng, rand_tokens(8 * BS, seed=70), rand_tokens(12 * BS, seed=71), release)
    finally:
        await eng.shutdown()


@pytest.mark.parametrize("release", ["unpin", "ttl"])
async def test_llamacpp_work_waits_for_a_pin_to_end(release: str) -> None:
    """llama.cpp engine, 128 cells: 60 pinned, an open of 100 waits for the pin."""
    pytest.importorskip("llama_cpp")
    eng = LlamaCppEngine(kv_cells=128, n_seq_max=4)
    try:
        await pinned_kv_is_waited_for(eng, list(range(1000, 1060)), list(range(2000, 2100)), release)
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- a turn keeps its place


async def test_llamacpp_generation_right_after_its_append_keeps_the_appends_place() -> None:
    """b's append arrives before a's; a's does not fit beside it and waits. b generates as soon as its append is
    computed: that generation continues b's turn, so a (younger) never preempts it for b's fresh KV: b writes
    what it writes alone, nothing is preempted, and a's append goes on once b is done."""
    pytest.importorskip("llama_cpp")
    n = 20
    b_head, b_delta = list(range(1000, 1060)), list(range(3000, 3060))
    a_head, a_delta = list(range(2000, 2060)), list(range(4000, 4090))
    roomy = LlamaCppEngine(kv_cells=1024, n_seq_max=4, max_tokens_per_step=32)
    try:  # the same cells in the same order, without pressure (see NEAR_TIE_NATS)
        ref = await roomy.open(b_head)
        await roomy.open(a_head)
        await roomy.append(ref, b_delta)
        alone, _, _ = await collect(roomy, ref, greedy(n))
    finally:
        await roomy.shutdown()
    # 120 + 60 held, a's 90 do not fit beside b's append; b's takes two steps, so a's arrives before b generates
    eng = LlamaCppEngine(kv_cells=256, n_seq_max=4, max_tokens_per_step=32)
    try:
        b, a = await eng.open(b_head), await eng.open(a_head)

        async def b_turn() -> list[int]:
            await eng.append(b, b_delta)
            return [t async for delta in eng.generate(b, greedy(n)) for t in delta.token_ids]

        turn = asyncio.create_task(b_turn())
        await asyncio.sleep(0)  # b's append is asked for first (event-loop order, not time)
        written, _ = await asyncio.wait_for(asyncio.gather(turn, eng.append(a, a_delta)), GUARD_S)
        assert eng.stats().preemptions == 0
        assert written == alone
        assert eng.seq_stats(b).recomputed_after_eviction == 0
        assert eng.tokens(a) == a_head + a_delta
    finally:
        await eng.shutdown()
