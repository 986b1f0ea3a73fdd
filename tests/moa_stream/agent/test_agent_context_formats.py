"""An Agent on an agent context format (`format: chat | thread | compact`): the sequence is the format's event log.

A tiny random model stands in for a real one: what is checked is the log's tokens and what each step computed, not
what the model says (its first step is forced to call, its second may not).
"""

from __future__ import annotations

import pytest

from engine import SamplingParams
from engine.transformers_engine import TransformersEngine
from moa_stream import AgentConfig, ConfigError
from moa_stream.agent.agent import Agent
from moa_stream.agent.events import AgentDone
from moa_stream.agent.formats import (
    AGENT_FORMATS,
    AnswerEvent,
    CallEvent,
    ResultEvent,
    ToolsEvent,
    UserTurn,
    agent_format,
)
from moa_stream.tools import Tool, ToolCall, ToolSet
from tests.conftest import count_model_positions, tiny_llama


def flip(on: bool) -> bool:
    """Flip a switch (a bool argument: a random model's call stays short)."""
    return not on


@pytest.fixture
async def engine() -> TransformersEngine:
    """A tiny random model over the default model's whole vocabulary."""
    eng = TransformersEngine(tiny_llama(vocab=49152), block_size=4, kv_cache_bytes=64 << 20)
    yield eng
    await eng.shutdown()


def agent_on(engine: TransformersEngine, fmt: str) -> Agent:
    """A first step that must call `echo`, a second that may only answer in words."""
    return Agent(engine, ToolSet([Tool.from_function(flip)]), format=fmt, tool_choice="required",
                 later_tool_choice="none", sampling=SamplingParams(max_tokens=48), max_steps=2,
                 system_prompt="You repeat things.")


async def run(agent: Agent, text: str, first: bool) -> AgentDone:
    """One user turn, its AgentDone."""
    stream = agent.run(text) if first else agent.send(text)
    events = [ev async for ev in stream]
    assert isinstance(events[-1], AgentDone)
    return events[-1]


@pytest.mark.parametrize("fmt", sorted(AGENT_FORMATS))
async def test_the_sequence_is_the_formats_log_and_a_turn_computes_its_events_and_cue(engine, fmt):
    agent = agent_on(engine, fmt)
    done = await run(agent, "Repeat hello.", first=True)
    assert [c.name for c in done.calls] == ["flip"] and done.results[0].ok, "the forced first step called flip"
    call, result = done.calls[0], done.results[0]

    # The same history rendered by a fresh instance of the format: the sequence holds exactly that, no cue.
    ref = agent_format(fmt, agent.slot.fmt, agent.tools, "You repeat things.", answers=True)
    log = ref.prefix() + ref.append(UserTurn("Repeat hello."))
    log += ref.append(CallEvent(ToolCall("", call.name, call.arguments)))
    log += ref.append(ResultEvent("flip", result.result))
    log += ref.append(AnswerEvent(done.answer))
    assert engine.tokens(agent.slot.seq) == log

    # The next turn appends only its user turn; each step adds its cue on a fork (plus the step's events).
    seq, before = agent.slot.seq, len(log)
    with count_model_positions(engine) as fed:
        second = await run(agent, "Again.", first=False)
    user = ref.append(UserTurn("Again."))
    assert agent.slot.seq is seq and engine.tokens(seq)[before:before + len(user)] == user
    assert second.metrics.steps[0].prefill_computed == len(user) + len(ref.cue())
    # Counted at the model: the user turn, each step's cue and tokens, and each step's events, nothing re-read.
    m = second.metrics
    assert fed.count == m.prefill_computed + m.decode_tokens


async def test_an_agent_config_picks_the_format(engine):
    agent = Agent.from_config(AgentConfig(name="a", format="compact", temperature=0.0), engine,
                              tools=ToolSet([Tool.from_function(flip)]))
    assert agent.context_format == "compact"
    done = [ev async for ev in agent.run("Repeat hello.")][-1]
    assert isinstance(done, AgentDone)
    assert engine.tokens(agent.slot.seq)[:len(agent.context.fmt.prefix())] == agent.context.fmt.prefix()


def test_a_call_syntax_or_unknown_name_as_format_is_a_clear_error(engine):
    with pytest.raises(ConfigError, match="call_format"):
        Agent(engine, format="hermes")
    with pytest.raises(ConfigError, match="chat, compact, thread"):
        Agent(engine, format="xml")
    with pytest.raises(ConfigError, match="give the agent a format"):
        Agent(engine, proposers=[AgentConfig(name="p")])


async def test_a_revealed_tool_is_an_event_in_the_live_log_and_callable_from_then_on(engine):
    agent = agent_on(engine, "thread")
    await run(agent, "Repeat hello.", first=True)
    before = len(engine.tokens(agent.slot.seq))

    def stamp(n: int) -> int:
        """Stamp a number."""
        return n + 1

    revealed = ToolSet([Tool.from_function(stamp)])
    await agent.reveal(revealed)
    added = agent.context.fmt.append(ToolsEvent(({"name": "stamp", "description": "Stamp a number.",
                                                  "parameters": revealed.get("stamp").parameters},)))
    assert engine.tokens(agent.slot.seq)[before:] == added, "appended, nothing rebuilt"
    assert agent.tools.names == ["flip", "stamp"] and agent.executor.tools is agent.tools
    assert agent.step_sampling(0).structured is not None


def test_compact_reads_an_answer_line():
    fmt = AGENT_FORMATS["compact"]
    assert fmt.read_answer(fmt, 'answer: "Done: 2 files."') == "Done: 2 files."
    assert fmt.read_answer(fmt, "It is done.") == "It is done."
