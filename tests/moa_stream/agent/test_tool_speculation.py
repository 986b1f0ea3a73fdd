"""Speculative tool calls: exact matches are taken, wrong guesses cancelled unseen, impure tools never started.

The draft speculator guesses on a fork (the agent's sequence untouched) or on another engine, and stops with the
step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from engine.transformers_engine import TransformersEngine
from moa_stream.agent.context import ChatFormat
from moa_stream.agent.draft_speculator import DraftSpeculator, DraftStats
from moa_stream.agent.tool_speculation import (
    HistoryPredictor,
    PredictedCall,
    PredictedStart,
    SpeculativeCalls,
    Speculator,
    StepContext,
)
from moa_stream.tools import ForceTool, Tool, ToolSet
from tests.conftest import tiny_llama


@pytest.fixture
async def tiny_engine_49k() -> TransformersEngine:
    """A tiny random model over the default model's whole vocabulary (chat text encodes to any id)."""
    eng = TransformersEngine(tiny_llama(vocab=49152), block_size=4, kv_cache_bytes=64 << 20)
    yield eng
    await eng.shutdown()


class Tools:
    """Real async tools whose completion the test controls with an event (no sleeps, no timing)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []

    async def run(self, name: str, arguments: Mapping[str, Any]) -> Any:
        self.ran.append((name, dict(arguments)))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        if name == "fail":
            raise RuntimeError("tool failed")
        return {"sum": sum(arguments.get("numbers", []))}

    @staticmethod
    def is_pure(name: str) -> bool:
        return name != "rm"


async def test_an_exact_match_is_taken_and_the_tool_runs_once() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    assert spec.start("add", {"numbers": [1, 2]}, "stream")
    assert not spec.start("add", {"numbers": [1, 2]}, "stream")  # already running
    tools.release.set()
    taken, result = await spec.take("add", {"numbers": [1, 2]})
    assert taken and result == {"sum": 3}
    assert len(tools.ran) == 1 and spec.stats.taken == 1 and spec.stats.alpha == 1.0


async def test_a_wrong_guess_is_cancelled_and_its_result_never_returned() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    spec.start("add", {"numbers": [1, 2]}, "history")
    await asyncio.sleep(0)  # let the guess start running
    assert await spec.take("add", {"numbers": [1, 3]}) == (False, None)  # the model asked for another call
    assert await spec.cancel_rest() == 1
    assert tools.cancelled == ["add"] and spec.stats.cancelled == 1 and spec.stats.alpha == 0.0


async def test_impure_tools_are_never_started_and_a_failed_guess_is_not_taken() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    assert not spec.start("rm", {"path": "x"}, "stream")
    assert tools.ran == [] and spec.stats.refused_impure == 1 and spec.stats.started == 0
    spec.start("fail", {}, "stream")
    tools.release.set()
    assert await spec.take("fail", {}) == (False, None)  # the real call runs and reports its own error


@pytest.mark.parametrize("seen", [[], [PredictedCall("cd", {"folder": "a"})]])
def test_history_predicts_the_usual_follower_else_the_usual_step(seen: list[PredictedCall]) -> None:
    history = HistoryPredictor()
    assert history.predict(seen) is None
    cd, ls, pwd = PredictedCall("cd", {"folder": "a"}), PredictedCall("ls", {}), PredictedCall("pwd", {})
    history.observe([cd, ls])
    history.observe([cd, ls])
    history.observe([pwd, pwd])
    assert history.predict(seen) == (ls if seen else cd)
    assert history.predict([PredictedCall("mkdir", {"dir_name": "b"})]) == ls  # unseen: step 1's usual call


# ------------------------------------------------------------------------------------------ the draft speculator


def lookup(flag: bool) -> str:
    """Look a flag up (a pure tool)."""
    return f"value of {flag}"


async def draft_context(eng: Any, tool: str = "lookup") -> StepContext:
    """A step's context on `eng`: a fresh agent prompt for a forced call of `tool`, the sequence opened."""
    from moa_stream.agent.agent import Agent

    agent = Agent(eng, ToolSet([Tool.from_function(lookup, pure=True)]), tool_choice=ForceTool(tool))
    messages = agent.with_tools(agent.messages("Look up the flag."))
    seq = await eng.open(ChatFormat(eng.tokenizer).prompt_split(messages)[0])
    return StepContext((), eng, seq, tuple(eng.tokens(seq)), agent.format, agent.step_sampling().structured)


async def test_a_draft_on_a_fork_of_the_real_model_predicts_the_call_and_leaves_the_sequence_as_it_was(engine):
    ctx = await draft_context(engine)
    before_tokens, before_stats = engine.tokens(ctx.seq), engine.seq_stats(ctx.seq)
    open_before = engine.stats().sequences_open
    draft = DraftSpeculator(max_tokens=48)
    try:
        guess = await asyncio.wait_for(draft.guess(ctx), 120)
        assert guess is not None and guess.name == "lookup" and isinstance(guess.arguments.get("flag"), bool)
        assert draft.stats == DraftStats(drafts=1, guessed=1, tokens=draft.stats.tokens) and draft.stats.tokens > 0
        assert engine.tokens(ctx.seq) == before_tokens, "the draft wrote nothing into the agent's sequence"
        assert engine.seq_stats(ctx.seq) == before_stats
        assert engine.stats().sequences_open == open_before, "the draft's fork was closed"
        assert ctx._released.is_set(), "the step was let go"
    finally:
        await engine.close(ctx.seq)


async def test_a_draft_cancelled_when_the_step_ends_closes_its_fork_and_starts_nothing(tiny_engine_49k):
    eng = tiny_engine_49k
    ctx = await draft_context(eng)
    tools = Tools()
    early = SpeculativeCalls(tools.run, tools.is_pure)
    draft = DraftSpeculator(max_tokens=512)  # long enough to be cut short
    predicted = PredictedStart(draft, ctx, early)
    await predicted.begin()
    assert ctx._released.is_set() and eng.stats().sequences_open == 2  # the agent's and the draft's fork
    await predicted.stop()
    assert draft.stats.cancelled == 1 and draft.stats.guessed == 0
    assert early.stats.started == 0 and tools.ran == []
    assert eng.stats().sequences_open == 1 and len(eng.tokens(ctx.seq)) == len(ctx.tokens)
    await eng.close(ctx.seq)


async def test_a_draft_on_another_engine_opens_the_rendered_text(tiny_engine_49k, engine):
    """Another backend (here the real model drafting for a tiny one) reads the context as text."""
    ctx = await draft_context(tiny_engine_49k)
    draft = DraftSpeculator(engine, max_tokens=48)
    open_before = engine.stats().sequences_open
    try:
        guess = await asyncio.wait_for(draft.guess(ctx), 120)
        assert guess is not None and guess.name == "lookup" and draft.stats.guessed == 1
        assert engine.stats().sequences_open == open_before
        assert tiny_engine_49k.tokens(ctx.seq) == list(ctx.tokens)
    finally:
        await tiny_engine_49k.close(ctx.seq)


@pytest.mark.parametrize("kind", ["history", "draft"])
async def test_both_speculators_keep_the_speculator_contract(engine, kind: str) -> None:
    """What the agent relies on (Speculator's docstrings), checked by using each one: `guess` lets the step go,
    predicts a call of the step's tool, never writes to the agent's sequence and frees what it opened; `observe`
    takes a finished run's calls (history learns from them; the draft reads the context afresh)."""
    spec: Speculator = HistoryPredictor() if kind == "history" else DraftSpeculator(max_tokens=48)
    ctx = await draft_context(engine)
    try:
        if kind == "history":
            assert await spec.guess(ctx) is None, "nothing observed yet: nothing predicted"
            assert ctx._released.is_set()
            ctx = StepContext(ctx.calls, ctx.engine, ctx.seq, ctx.tokens, ctx.format, ctx.structured)
            spec.observe([PredictedCall("lookup", {"flag": True})])
        before, open_before = engine.tokens(ctx.seq), engine.stats().sequences_open
        guess = await asyncio.wait_for(spec.guess(ctx), 120)
        assert ctx._released.is_set(), "the step was let go"
        assert isinstance(guess, PredictedCall) and guess.name == "lookup"
        assert isinstance(guess.arguments.get("flag"), bool)
        if kind == "history":
            assert guess == PredictedCall("lookup", {"flag": True}), "the observed run's call was predicted"
        assert engine.tokens(ctx.seq) == before and engine.stats().sequences_open == open_before
        spec.observe([guess])
        assert spec.name == kind
    finally:
        await engine.close(ctx.seq)


async def test_hidden_time_is_the_tool_time_before_the_real_call_asked_not_the_wait_after() -> None:
    tools = Tools()
    now = [0.0]
    spec = SpeculativeCalls(tools.run, tools.is_pure, clock=lambda: now[0])
    spec.start("add", {"numbers": [1]}, "draft")
    await asyncio.sleep(0)
    now[0] = 0.2  # the tool returns after 0.2 s...
    tools.release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    now[0] = 1.0  # ...and the model asks for the call at 1.0 s
    assert await spec.take("add", {"numbers": [1]}) == (True, {"sum": 1})
    assert spec.stats.hidden_seconds == pytest.approx(0.2)
