"""Trace in, next step out: an agent (or a MoA of agents) predicts each next call of a BFCL trace on one sequence.

For a BFCL case, ONE engine sequence is opened with an agent format's prefix. At each step k the events the agent
has read since step k-1 (the ground-truth call and result of step k-1, the user turn that opens step k) are
appended to it (only their tokens are computed), then a fork gets the format's cue and the model writes the next
call, greedily and constrained to the tools' schemas. The fork is closed, so the main sequence never holds a cue
or a prediction; the prediction is scored against step k by call match and by executed effect.

MoA: every proposer samples a call on its own fork of the same sequence (its temperature and seed from the
config); the aggregator's fork gets the proposals as text and writes the call that is scored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine import Engine, SamplingParams
from engine import Sequence as EngineSequence
from moa_stream import AgentConfig, ChatFormat
from moa_stream.agent.formats import AgentFormat, agent_format, json_line
from moa_stream.tools import BfclCase, ToolCall, ToolSet, bfcl_execute, bfcl_tools, fresh_instances

from .next_step_scoring import score_next_step
from .traces import Trace, opening_events, replay, step_events

NO_CALL = "(no valid call)"


@dataclass
class StepOutcome:
    """One predicted step: what was expected and predicted, how it scored, and what it cost."""

    step: int
    expected: ToolCall
    predicted: ToolCall | None
    call_match: bool
    effect_match: bool
    error: str | None
    reply: str  # the text the (aggregating) agent wrote
    prefill_computed: int  # tokens computed for the step: its events on the main sequence and every fork's cue
    appended: int  # tokens the step's events added to the main sequence
    cue_tokens: int  # tokens of the cue(s) on forks (proposers' and aggregator's)
    context_tokens: int  # the main sequence's length when the step was asked for
    ttft_s: float | None  # from appending the step's events to the scored call's first token
    proposals: list[str] = field(default_factory=list)  # MoA: each proposer's call as JSON, or NO_CALL


@dataclass
class Episode:
    """Every step of one case in one format by one system, and the episode-level check."""

    case_id: str
    format: str
    system: str
    prefix_tokens: int
    prefix_computed: int  # the prefix's tokens the engine computed (the rest came from its prefix cache)
    steps: list[StepOutcome]
    state_match: bool  # the predicted calls, replayed in order, reach the ground truth's end state (BFCL checker)
    total_s: float


@dataclass(frozen=True)
class _Agent:
    """An agent as the next-step run uses it: its sampling."""

    name: str
    sampling: SamplingParams


def _agent(cfg: AgentConfig, fmt: AgentFormat, max_tokens: int,
           structured: bool) -> _Agent:
    # The config's sampling, without a repetition penalty: a call copies names and values from its context.
    params = dataclasses.replace(cfg.sampling(max_tokens), repetition_penalty=1.0,
                                 frequency_penalty=0.0, presence_penalty=0.0, ignore_eos=False, stop=fmt.stop(),
                                 structured=fmt.structured() if structured else None)
    return _Agent(cfg.name, params)


async def _write(engine: Engine, main: EngineSequence, cue: list[int], agent: _Agent,
                 step: int) -> tuple[str, float | None, int]:
    """On a fork of `main`: append the cue, generate; (text, time of its first token, tokens computed)."""
    fork = await engine.fork(main)
    try:
        if cue:
            await engine.append(fork, cue)
        params = agent.sampling
        if params.seed is not None:  # another draw at every step, the same draw on every rerun
            params = dataclasses.replace(params, seed=params.seed + step)
        text, first = "", None
        async for delta in engine.generate(fork, params):
            if first is None and delta.token_ids:
                first = time.perf_counter()
            text += delta.text
        return text, first, engine.seq_stats(fork).prefill_computed
    finally:
        await engine.close(fork)


def _replayed_state_matches(trace: Trace, predicted: Sequence[ToolCall | None]) -> bool:
    """Whether the predicted calls, run in order on fresh instances, leave BFCL's ground-truth end state."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    mine = fresh_instances(trace.case)
    for call in predicted:
        if call is None:
            continue
        try:
            bfcl_execute(call, mine)
        except Exception:  # a failing predicted call changes nothing, as in BFCL's executor
            continue
    return bool(state_checker(mine, trace.instances)["valid"])


async def predict_next_steps(engine: Engine, case: BfclCase | Trace, format_name: str, *,
                             aggregator: AgentConfig | None = None, proposers: Sequence[AgentConfig] = (),
                             max_tokens: int = 128, structured: bool = True,
                             instructions: str | None = None) -> Episode:
    """Predict every step of a BFCL case in one agent format on one engine sequence (MoA when proposers are given).

    `aggregator` is the agent that writes the scored call (greedy by default); with `proposers`, each proposes a
    call first and the aggregator reads them. Metrics per step come from the engine's sequence counters.
    """
    trace = case if isinstance(case, Trace) else replay(case)
    chat = ChatFormat(engine.tokenizer)
    every = bfcl_tools(trace.case)
    shown = {d["name"] for d in trace.case.function_docs(0)}  # miss_func: the rest come at their turn
    fmt = agent_format(format_name, chat, ToolSet([t for t in every if t.name in shown]), instructions)
    agg_cfg = aggregator or AgentConfig(name="agent", temperature=0.0)
    agg = _agent(agg_cfg, fmt, max_tokens, structured)
    props = [_agent(p, fmt, max_tokens, structured) for p in proposers]
    t_start = time.perf_counter()
    prefix = fmt.prefix()
    main = await engine.open(prefix)
    outcomes: list[StepOutcome] = []
    try:
        prefix_computed = engine.seq_stats(main).prefill_computed
        for k, step in enumerate(trace.steps):
            events = [*(step_events(trace.steps[k - 1]) if k else ()), *opening_events(step, every)]
            if step.revealed:  # the revealed functions join the grammar too
                fmt.tools = fmt.tools | ToolSet([t for t in every if t.name in step.revealed])
                agg = _agent(agg_cfg, fmt, max_tokens, structured)
                props = [_agent(p, fmt, max_tokens, structured) for p in proposers]
            t0 = time.perf_counter()
            delta = [t for e in events for t in fmt.append(e)]
            before = engine.seq_stats(main).prefill_computed
            if delta:
                await engine.append(main, delta)
            computed = engine.seq_stats(main).prefill_computed - before
            context = len(engine.tokens(main))
            cue = fmt.cue()
            proposals: list[str] = []
            cue_tokens = 0
            if props:
                written = await asyncio.gather(*(_write(engine, main, cue, p, k) for p in props))
                for text, _, fork_computed in written:
                    call, _ = fmt.read_call(text)
                    proposals.append(json_line({"name": call.name, "arguments": call.arguments}) if call else NO_CALL)
                    computed += fork_computed
                    cue_tokens += len(cue)
                cue = fmt.proposals_cue(proposals)
            reply, first, fork_computed = await _write(engine, main, cue, agg, k)
            computed += fork_computed
            cue_tokens += len(cue)
            predicted, why = fmt.read_call(reply)
            score = score_next_step(trace, k, predicted)
            outcomes.append(StepOutcome(
                k, step.call, predicted, score.call_match, score.effect_match, why or score.error, reply, computed,
                len(delta), cue_tokens, context, None if first is None else first - t0, proposals))
    finally:
        await engine.close(main)
    system = "moa" if props else "single"
    return Episode(trace.case.id, format_name, system, len(prefix), prefix_computed, outcomes,
                   _replayed_state_matches(trace, [o.predicted for o in outcomes]), time.perf_counter() - t_start)
