"""Proposers serve the answer: while the aggregator answers, a proposer runs at most `proposer_lead_chunks` chunks
ahead of what the aggregator has taken in (moa_stream/moa/pacing.py). Counters only, no clocks: the turn tests run the
real llama.cpp engine, where every generating sequence decodes in the same steps, so how far a proposer gets while
the aggregator writes its first step is fixed by token counts, not by the machine's speed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moa_stream import MoA, MoAConfig
from moa_stream.moa.pacing import ANSWER_PRIORITY, PROPOSER_PRIORITY, Pacing
from moa_stream.moa.proposer import part_seed

QUESTION = "Explain how vaccines train the immune system, with examples."
CHUNK, PROPOSER_TOKENS, INTAKE_EVERY, ANSWER_TOKENS = 4, 40, 16, 32


async def test_a_proposer_waits_only_while_the_aggregator_answers_and_is_ahead() -> None:
    pacing = Pacing(2, lead_chunks=1)
    pacing.wrote(0)
    await asyncio.wait_for(pacing.before_chunk(0), 1)  # before the answer starts nothing is held
    assert (pacing.holds, pacing.priority()) == (0, ANSWER_PRIORITY)
    pacing.start_answer()
    assert pacing.priority() == PROPOSER_PRIORITY
    waiting = asyncio.ensure_future(pacing.before_chunk(0))
    await asyncio.sleep(0)  # one loop turn: the waiter is parked, not timed
    assert not waiting.done()
    await asyncio.wait_for(pacing.before_chunk(1), 1)  # proposer 1 has nothing unread: it goes on
    pacing.took(0)
    await asyncio.wait_for(waiting, 1)
    assert pacing.holds == 1
    pacing.wrote(0)
    assert pacing.max_ahead == 1


def test_each_part_of_a_seeded_proposal_has_its_own_seed() -> None:
    seeds = [part_seed(7, i) for i in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert part_seed(None, 3) is None


def paced_config(lead: int | None) -> MoAConfig:
    """Two proposers writing 40 tokens in 4-token chunks; the aggregator takes them in every 16 answer tokens."""
    cfg = MoAConfig.default(proposers=2, max_tokens=PROPOSER_TOKENS)
    layers = [[a.model_copy(update={"ignore_eos": True}) for a in cfg.layers[0]]]
    aggregator = cfg.aggregator.model_copy(update={"max_tokens": ANSWER_TOKENS, "ignore_eos": True})
    knobs = cfg.staircase.model_copy(update={"first_chunk_tokens": CHUNK, "chunk_tokens": CHUNK,
                                             "aggregator_tokens_per_intake": INTAKE_EVERY,
                                             "proposer_lead_chunks": lead})
    return cfg.model_copy(update={"layers": layers, "aggregator": aggregator, "staircase": knobs,
                                  "mode": "interleaved"})


@pytest.fixture
async def engine_for_turns() -> AsyncIterator[Any]:
    """The llama.cpp engine on the shipped GGUF, checked for leaked sequences after the test."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    eng = LlamaCppEngine()
    yield eng
    assert eng.stats().sequences_open == 0, "a MoA turn leaked sequences"
    await eng.shutdown()


async def test_a_throttled_proposer_never_runs_more_than_its_lead_ahead(engine_for_turns: Any) -> None:
    moa = MoA.from_config(paced_config(lead=1), engines={"default": engine_for_turns})
    result = await moa.run(QUESTION)
    m = result.metrics
    # During the aggregator's first 16-token step each proposer could write four chunks; it wrote one, then waited.
    assert m.proposer_holds >= 2
    assert m.proposer_max_lead_chunks == 1
    assert m.answer_tokens == ANSWER_TOKENS and result.answer
    assert not result.errors


async def test_without_the_throttle_proposers_run_chunks_ahead(engine_for_turns: Any) -> None:
    """The control: unthrottled, a proposer writes several chunks while the aggregator writes one step."""
    moa = MoA.from_config(paced_config(lead=None), engines={"default": engine_for_turns})
    m = (await moa.run(QUESTION)).metrics
    assert m.proposer_holds == 0
    assert m.proposer_max_lead_chunks > 1
