"""Debate: agents answer, then each reads every agent's answer as it streams and revises its own.

The tiny random model with the real vocabulary runs every agent (the transformers engine: `staircase` is the
append-only `interleaved` layout there). What the model computed is counted at its input embedding and must equal
what the agents' counters say; each reader's context is every token read once (nothing re-read). The failing
debater is an HTTP backend on tests/misbehaving_server.py's `cut` path (three tokens, then the connection drops): a
real model cannot be made to fail mid-answer on demand.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.transformers_engine import TransformersEngine
from moa_stream import AgentError, ChunkIngested, ConfigError, Done, Event, MoA, MoAConfig, ProposerDelta
from moa_stream.backends import build_engines
from tests.conftest import count_model_positions
from tests.misbehaving_server import MisbehavingServer

AGENTS = ["pro", "con", "judge"]


def debate_config(rounds: int = 2, final: str = "aggregator", **extra: Any) -> dict[str, Any]:
    """Three greedy debaters (the first round writes 16 tokens past any EOS, so that it streams long)."""
    agents = [{"name": n, "temperature": 0.0, "max_tokens": 16, "ignore_eos": True,
               "system_prompt": f"You argue as {n}."} for n in AGENTS]
    return {
        "backends": {"default": {"kind": "transformers"}},
        "layers": [[{"name": "unused", "temperature": 0.0, "max_tokens": 4}]],
        "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": 6},
        "debate": {"rounds": rounds, "agents": agents, "final": final, **extra},
        "staircase": {"first_chunk_tokens": 2, "chunk_tokens": 4, "aggregator_tokens_per_intake": 2,
                      "read_every_proposal": False},
    }


def first_delta(events: list[Event], agent: str) -> int:
    """Where the agent wrote its first text."""
    return next(k for k, ev in enumerate(events) if isinstance(ev, ProposerDelta) and ev.agent == agent)


def reads(events: list[Event], reader: str) -> list[tuple[int, ChunkIngested]]:
    """The chunks `reader` took in, with their places in the stream."""
    return [(k, ev) for k, ev in enumerate(events) if isinstance(ev, ChunkIngested) and ev.reader == reader]


@pytest.mark.parametrize("rounds", [2, 3])
async def test_streaming_debate_reads_each_round_as_it_streams_at_its_delta(tiny: TransformersEngine, rounds: int):
    moa = MoA(MoAConfig.parse(debate_config(rounds)), {"default": tiny})
    before = tiny.stats()
    with count_model_positions(tiny) as fed:
        events = [ev async for ev in moa.stream("Is a tomato a fruit?", mode="debate")]
    done = events[-1]
    assert isinstance(done, Done) and done.answer and done.metrics.mode == "debate"
    after = tiny.stats()
    assert fed.count == (after.prefill_computed - before.prefill_computed) + (after.decode_tokens
                                                                             - before.decode_tokens)
    assert "unused" not in done.metrics.agents  # a debate runs its own agents, not the proposer layers
    for r in range(1, rounds):
        for name in AGENTS:
            agent = f"{name}@{r + 1}"
            m = done.metrics.agents[agent]
            assert m.layer == r and not m.error
            read = reads(events, agent)
            # Append-only: no token of its context computed twice, and it computed past its prompt. (Not every
            # token: an intake still queued when the answer ended is never computed, nor is the last sampled token.)
            assert m.prefill_computed + m.prefill_reused + m.decode_tokens <= m.context_tokens, m
            assert m.prefill_computed + m.prefill_reused > m.prompt_tokens, m
            # It read every agent of the round before, itself included, and only that round.
            assert {ev.agent for _, ev in read if ev.tokens} == {n if r == 1 else f"{n}@{r}" for n in AGENTS}
            assert {ev.layer for _, ev in read} == {r - 1}
            # A staircase: it took in more of the round before after it had started writing.
            assert any(k > first_delta(events, agent) for k, _ in read)
    assert {ev.layer for _, ev in reads(events, "aggregator")} == {rounds - 1}
    assert tiny.stats().sequences_open == 0


async def test_sequential_debate_waits_for_whole_answers(tiny: TransformersEngine):
    moa = MoA(MoAConfig.parse(debate_config()), {"default": tiny})
    events = [ev async for ev in moa.stream("Is a tomato a fruit?", mode="debate-sequential")]
    done = events[-1]
    assert isinstance(done, Done) and done.answer and done.metrics.mode == "debate-sequential"
    for name in AGENTS:
        finals = [k for k, ev in reads(events, f"{name}@2") if ev.final]
        assert len(finals) == len(AGENTS) and max(finals) < first_delta(events, f"{name}@2")


async def test_last_round_final_streams_the_chosen_agents_answer(tiny: TransformersEngine):
    cfg = MoAConfig.parse(debate_config(final="last-round", final_agent="con"))
    events = [ev async for ev in MoA(cfg, {"default": tiny}).stream("Is a tomato a fruit?", mode="debate")]
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    agents = done.metrics.agents
    assert agents["con@2"].role == "aggregator" and "aggregator" not in agents
    assert {n for n, a in agents.items() if a.role == "proposer"} == set(AGENTS)  # the last round is con's alone
    assert {ev.reader for ev in events if isinstance(ev, ChunkIngested)} == {"con@2"}


async def test_a_debater_that_fails_is_dropped_and_the_debate_answers(tiny: TransformersEngine,
                                                                      fake: MisbehavingServer):
    data = debate_config()
    data["backends"]["broken"] = {"kind": "http", "base_url": fake.url("cut"), "max_retries": 0}
    data["debate"]["agents"][2]["backend"] = "broken"
    cfg = MoAConfig.parse(data)
    moa = MoA(cfg, {"default": tiny, **build_engines({"broken": cfg.backends["broken"]})})
    try:
        events = [ev async for ev in moa.stream("Is a tomato a fruit?", mode="debate")]
    finally:
        await moa.engines["broken"].shutdown()
    failed = {(ev.agent, ev.layer) for ev in events if isinstance(ev, AgentError)}
    assert ("judge", 0) in failed  # its first answer broke off; the others' second round went on without it
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    for name in ("pro@2", "con@2"):
        assert not done.metrics.agents[name].error and done.metrics.agents[name].completion_tokens > 0
    assert tiny.stats().sequences_open == 0


async def test_a_debate_conversation_extends_each_rounds_sequence(tiny: TransformersEngine):
    conv = MoA(MoAConfig.parse(debate_config()), {"default": tiny}).conversation(mode="debate")
    try:
        await conv.send("Is a tomato a fruit?")
        second = await conv.send("And a cucumber?")
    finally:
        await conv.close()
    # Round 1 agents extend their live sequences: the first turn's context is carried, not recomputed.
    for name in AGENTS:
        a = second.metrics.agents[name]
        assert a.context_tokens - (a.prefill_computed + a.prefill_reused + a.decode_tokens) > 0, a
    assert tiny.stats().sequences_open == 0


def test_debate_config_names_what_is_wrong():
    with pytest.raises(ConfigError, match="final_agent 'nobody' is not a debate agent"):
        MoAConfig.parse(debate_config(final="last-round", final_agent="nobody"))
    with pytest.raises(ConfigError, match="needs rounds >= 2"):
        MoAConfig.parse(debate_config(rounds=1, final="last-round"))
