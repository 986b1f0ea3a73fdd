"""A long session under a KV budget far below its context: memory stays under the budget, answers are unchanged.

One conversation of 40 turns lives on one sequence (each turn appends the user's tokens and decodes the
answer), while another tenant opens a new prompt every turn and leaves it open. Everything opened adds up to
several times the KV budget, so sequences (the session's included) are evicted and recomputed; greedy answers
must equal those of an engine whose budget holds everything.
"""

from __future__ import annotations

import asyncio

from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, tiny_llama
from tests.engine.test_transformers_engine_tiny import BS, greedy, rand_tokens, small_engine

TURNS = 40
USER, ANSWER, SIDE = 3, 2, 40  # tokens per user turn, per answer, per side prompt
BUDGET_BLOCKS = 80  # 320 tokens of KV


async def run_session(eng: TransformersEngine) -> tuple[list[list[int]], int, int]:
    """Play the session; returns (every answer, session and side interleaved), peak KV bytes, tokens opened."""
    answers: list[list[int]] = []
    peak, opened = 0, 16
    session = await eng.open(rand_tokens(16, seed=1000))
    for turn in range(TURNS):
        await eng.append(session, rand_tokens(USER, seed=2000 + turn))
        peak = max(peak, eng.stats().kv_bytes_resident)
        side = await eng.open(rand_tokens(SIDE, seed=3000 + turn))  # left open: idle, evictable
        peak = max(peak, eng.stats().kv_bytes_resident)
        # Both answers decode in the same forward passes (continuous batching keeps the test fast).
        both = await asyncio.gather(collect(eng, session, greedy(ANSWER)), collect(eng, side, greedy(ANSWER)))
        answers += [ids for ids, _, _ in both]
        peak = max(peak, eng.stats().kv_bytes_resident)
        opened += USER + ANSWER + SIDE + ANSWER
    return answers, peak, opened


async def test_forty_turns_under_a_small_kv_budget_match_an_unbudgeted_run() -> None:
    """Peak KV stays within the budget and every greedy answer equals the unbudgeted engine's."""
    budgeted = small_engine(blocks=BUDGET_BLOCKS)
    unbudgeted = TransformersEngine(tiny_llama(), block_size=BS, kv_cache_bytes=4 << 20)
    try:
        (got, peak, opened), (want, _, _) = await asyncio.gather(run_session(budgeted), run_session(unbudgeted))
        st = budgeted.stats()
        budget = st.kv_bytes_budget
        print(f"\nlong session: {TURNS} turns, {opened} tokens opened vs a KV budget of {BUDGET_BLOCKS * BS} tokens; "
              f"peak KV {peak} B of {budget} B; {st.evictions} evictions")
        assert opened >= 5 * BUDGET_BLOCKS * BS, "the session's context is far beyond the budget"
        assert peak <= budget
        assert st.evictions > 0, "the budget really was short"
        assert unbudgeted.stats().evictions == 0
        assert got == want
    finally:
        await budgeted.shutdown()
        await unbudgeted.shutdown()
