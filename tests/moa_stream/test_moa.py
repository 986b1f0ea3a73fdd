"""MoA on the real default model: staircase appends only, early first token, failures, cancellation, turns."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from moa_stream import (
    AgentError,
    AggregatorDelta,
    ChunkIngested,
    Done,
    FirstToken,
    MoA,
    MoAConfig,
    MoAError,
    ProposerDelta,
)

LONG_QUESTION = "Write a detailed essay about the history of the Roman Empire, from its founding to its fall."


def small_config(proposer_tokens: int = 24, answer_tokens: int = 16, **staircase: object) -> MoAConfig:
    """Three proposers and an aggregator with short outputs, so a turn takes seconds on the CPU."""
    cfg = MoAConfig.default(max_tokens=proposer_tokens)
    knobs = {"first_chunk_tokens": 4, "chunk_tokens": 4, "aggregator_tokens_per_intake": 4, **staircase}
    return cfg.model_copy(update={
        "aggregator": cfg.aggregator.model_copy(update={"max_tokens": answer_tokens}),
        "staircase": cfg.staircase.model_copy(update=knobs),
    })


@pytest.fixture
async def moa(engine):
    m = MoA.from_config(small_config(), engines={"default": engine})
    yield m
    stats = engine.stats()
    assert stats.sequences_open == 0, "a MoA turn leaked sequences"
    assert stats.kv_bytes_resident == 0


async def test_staircase_aggregator_computes_each_token_once(moa):
    """The append-only layout never re-reads its context: computed + reused + decoded <= context length."""
    conv = moa.conversation(mode="staircase")
    try:
        result = await conv.send(LONG_QUESTION)
    finally:
        await conv.close()
    agg = result.metrics.agents["aggregator"]
    assert result.metrics.chunks_ingested > 3, "later chunks should arrive as appended blocks"
    computed = agg.prefill_computed + agg.prefill_reused + agg.decode_tokens
    assert agg.context_tokens - 1 <= computed <= agg.context_tokens


async def test_reprefill_layout_recomputes_what_staircase_appends(moa):
    """The paper's layout re-prefills the references at each intake; the append-only one does not."""
    stair = await moa.run(LONG_QUESTION, mode="staircase")
    repre = await moa.run(LONG_QUESTION, mode="staircase-reprefill")
    assert repre.metrics.chunks_ingested > 3
    repre_agg, stair_agg = repre.metrics.agents["aggregator"], stair.metrics.agents["aggregator"]
    # Each intake re-reads the whole prompt (the engine's prefix cache serves the unchanged head of it).
    assert repre_agg.prefill_computed + repre_agg.prefill_reused > 2 * repre_agg.context_tokens
    assert stair_agg.prefill_computed + stair_agg.prefill_reused <= stair_agg.context_tokens
    # Per token of context, not in absolute tokens: how many chunks each run takes in depends on the machine's load.
    read = [(a.prefill_computed + a.prefill_reused) / a.context_tokens for a in (repre_agg, stair_agg)]
    assert read[0] > 2 * read[1]
    assert repre.answer and stair.answer


async def test_first_token_comes_before_proposers_finish(moa):
    events = [ev async for ev in moa.stream(LONG_QUESTION, mode="staircase")]
    first = next(i for i, ev in enumerate(events) if isinstance(ev, FirstToken))
    last_proposal = max(i for i, ev in enumerate(events) if isinstance(ev, ProposerDelta))
    assert first < last_proposal
    done = events[-1]
    assert isinstance(done, Done) and done.metrics.ttft_s is not None
    assert done.answer == "".join(ev.text for ev in events if isinstance(ev, AggregatorDelta))


async def test_classic_waits_for_every_proposal(moa):
    events = [ev async for ev in moa.stream(LONG_QUESTION, mode="classic")]
    first = next(i for i, ev in enumerate(events) if isinstance(ev, FirstToken))
    last_proposal = max(i for i, ev in enumerate(events) if isinstance(ev, ProposerDelta))
    assert first > last_proposal
    finals = [ev for ev in events if isinstance(ev, ChunkIngested) and ev.final]
    assert len(finals) == 3


async def test_failing_proposer_does_not_stop_the_answer(engine):
    """A proposer whose prompt is longer than the model accepts fails at open; the others carry the answer."""
    cfg = small_config()
    too_long = "word " * (engine.max_model_len + 10)
    layer = [cfg.layers[0][0].model_copy(update={"system_prompt": too_long}), *cfg.layers[0][1:]]
    moa = MoA.from_config(cfg.model_copy(update={"layers": [layer]}), engines={"default": engine})
    events = [ev async for ev in moa.stream(LONG_QUESTION, mode="staircase")]
    errors = [ev for ev in events if isinstance(ev, AgentError)]
    assert [e.agent for e in errors] == ["analyst"]
    assert "exceeds" in errors[0].error
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    assert done.metrics.agents["analyst"].error
    assert engine.stats().sequences_open == 0


async def test_all_proposers_failing_raises(engine):
    cfg = small_config()
    too_long = "word " * (engine.max_model_len + 10)
    layer = [a.model_copy(update={"system_prompt": too_long}) for a in cfg.layers[0]]
    moa = MoA.from_config(cfg.model_copy(update={"layers": [layer]}), engines={"default": engine})
    with pytest.raises(MoAError, match="all 3 proposers failed"):
        await moa.run(LONG_QUESTION)
    assert engine.stats().sequences_open == 0


async def test_closing_the_stream_frees_every_sequence(moa, engine):
    async with contextlib.aclosing(moa.stream(LONG_QUESTION, mode="staircase")) as events:
        async for ev in events:
            if isinstance(ev, AggregatorDelta):
                assert engine.stats().sequences_open == 4  # three proposers and the aggregator are live
                break
    stats = engine.stats()
    assert stats.sequences_open == 0 and stats.kv_bytes_resident == 0


async def test_breaking_out_frees_every_sequence_once_the_generator_is_finalized(moa, engine):
    """A bare `break` leaves closing to Python's async-generator finalizer, which runs on the next loop turns."""
    async for ev in moa.stream(LONG_QUESTION, mode="staircase"):
        if isinstance(ev, AggregatorDelta):
            break
    for _ in range(500):  # a bounded poll, not a timing assertion: the finalizer needs a few loop turns
        if engine.stats().kv_bytes_resident == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.stats().sequences_open == 0 and engine.stats().kv_bytes_resident == 0


async def test_cancelling_the_task_frees_every_sequence(moa, engine):
    started = asyncio.Event()

    async def consume() -> None:
        async for ev in moa.stream(LONG_QUESTION, mode="staircase"):
            if isinstance(ev, ProposerDelta):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats().sequences_open == 0


async def test_second_turn_appends_only_the_new_turn(moa):
    conv = moa.conversation(mode="staircase")
    try:
        first = await conv.send("Name a primary color.")
        second = await conv.send("And another one?")
    finally:
        await conv.close()
    for name, m1 in first.metrics.agents.items():
        m2 = second.metrics.agents[name]
        assert m2.prefill_reused == 0
        # Everything computed in turn 2 lies beyond turn 1's context (+1: turn 1's last sampled token).
        assert m2.prefill_computed + m2.decode_tokens <= m2.context_tokens - m1.context_tokens + 1, name
    assert [m.content for m in conv.history][::2] == ["Name a primary color.", "And another one?"]


async def test_single_mode_uses_only_the_aggregator(moa):
    result = await moa.run("Say hello.", mode="single")
    assert list(result.metrics.agents) == ["aggregator"]
    assert result.answer and result.metrics.ttft_s is not None


async def test_empty_question_is_rejected(moa):
    with pytest.raises(ValueError, match="empty"):
        await moa.run("   ")
