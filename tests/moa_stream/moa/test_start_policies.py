"""When the aggregator starts (`all`, `quorum`, `first`, `at_once`) and a proposer silent past `agent_timeout_s`.

The silent proposer is an HTTP backend on tests/misbehaving_server.py's `stall` path (one token, then nothing until
the server stops): a real model cannot be made to go quiet on demand. The other agents run the tiny random model
with the real vocabulary. Nothing here times anything: a start policy that waited for the silent proposer would
end its turn with that proposer's timeout instead of an answer it never waited for.
"""

from __future__ import annotations

from typing import Any

from engine.transformers_engine import TransformersEngine
from moa_stream import AgentError, ChunkIngested, Done, Event, FirstToken, MoA, MoAConfig, ProposerDelta
from moa_stream.backends import build_engines
from tests.misbehaving_server import MisbehavingServer

# Nothing in the answer may wait on the silent proposer: an EOS with nothing pending ends it (it does not wait for
# the chunks still to come); a policy that waited for it would end in its timeout (30 s), failing the test.
NO_WAIT = {"read_every_proposal": False, "agent_timeout_s": 30}


def pipeline(tiny: TransformersEngine, fake: MisbehavingServer, good: int, staircase: dict[str, Any]) -> MoA:
    """`good` greedy proposers on the tiny model, one silent HTTP proposer, a greedy aggregator."""
    layer = [{"name": f"good{i}", "temperature": 0.0, "max_tokens": 8} for i in range(good)]
    layer.append({"name": "silent", "backend": "silent", "temperature": 0.0, "max_tokens": 8})
    cfg = MoAConfig.parse({
        "backends": {"default": {"kind": "transformers"},
                     "silent": {"kind": "http", "base_url": fake.url("stall"), "max_retries": 0}},
        "layers": [layer], "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": 6},
        "mode": "staircase",
        "staircase": {"first_chunk_tokens": 2, "chunk_tokens": 2, "aggregator_tokens_per_intake": 2, **staircase}})
    return MoA(cfg, {"default": tiny, **build_engines({"silent": cfg.backends["silent"]})})


async def events_of(moa: MoA) -> list[Event]:
    """Every event of one streamed turn; the silent backend is shut down afterwards."""
    try:
        return [ev async for ev in moa.stream("Why is the sky blue?")]
    finally:
        await moa.engines["silent"].shutdown()


def ingested_before_first_token(events: list[Event]) -> set[str]:
    """The proposers whose chunks the aggregator had read when it wrote its first token."""
    first = next(i for i, ev in enumerate(events) if isinstance(ev, FirstToken))
    return {ev.agent for ev in events[:first] if isinstance(ev, ChunkIngested) and ev.tokens}


async def test_quorum_starts_on_k_of_n_without_the_silent_proposer(tiny, fake):
    events = await events_of(pipeline(tiny, fake, good=2, staircase={"start_policy": "quorum", "quorum": 2, **NO_WAIT}))
    done = events[-1]
    assert isinstance(done, Done) and done.answer and done.metrics.answer_tokens > 0
    assert ingested_before_first_token(events) == {"good0", "good1"}  # the quorum: both, and only, good ones
    assert not [ev for ev in events if isinstance(ev, AgentError)]  # the answer never waited out the silence
    assert tiny.stats().sequences_open == 0


async def test_first_starts_on_the_first_proposer_ready(tiny, fake):
    events = await events_of(pipeline(tiny, fake, good=1, staircase={"start_policy": "first", **NO_WAIT}))
    assert isinstance(events[-1], Done) and events[-1].answer
    assert ingested_before_first_token(events) == {"good0"}
    assert not [ev for ev in events if isinstance(ev, AgentError)]


async def test_all_drops_a_proposer_silent_past_the_timeout_and_answers(tiny, fake):
    events = await events_of(pipeline(tiny, fake, good=2, staircase={"start_policy": "all", "agent_timeout_s": 3}))
    errors = [ev for ev in events if isinstance(ev, AgentError)]
    assert [(e.agent, e.kind) for e in errors] == [("silent", "timeout")]
    assert "no output for 3 s" in errors[0].error
    first = next(i for i, ev in enumerate(events) if isinstance(ev, FirstToken))
    assert events.index(errors[0]) < first  # `all` waited for every live proposer: the silent one was dropped first
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    assert done.metrics.agents["silent"].error and not done.metrics.agents["good0"].error
    assert tiny.stats().sequences_open == 0


async def test_at_once_writes_its_first_token_before_any_proposal_and_never_waits(tiny, fake):
    events = await events_of(pipeline(tiny, fake, good=2, staircase={"start_policy": "at_once", **NO_WAIT}))
    first = next(i for i, ev in enumerate(events) if isinstance(ev, FirstToken))
    assert not [ev for ev in events[:first] if isinstance(ev, ProposerDelta | ChunkIngested)]
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    assert not [ev for ev in events if isinstance(ev, AgentError)]  # it never waited for the silent one
    assert tiny.stats().sequences_open == 0
