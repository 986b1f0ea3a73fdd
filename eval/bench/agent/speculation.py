"""Speculative tool calls on the bench's traces: the real Agent with speculation off and on, per tool latency.

Each BFCL case is replayed by `moa_stream.Agent` itself (its ToolExecutor, SpeculativeCalls, CallStream and
speculator): only the model's choice is forced, by a grammar that accepts exactly the trace's next call, so off and
on read and write the same tokens. The case's tools are its BFCL functions bound to fresh instances, each taking a
simulated latency on top of the real function. The speculator (default: `HistoryPredictor`) has observed one
earlier run of the same workflow (a warm-up run, not timed), as in arXiv 2512.15834's repeated-workflow setting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import Engine, SamplingParams
from moa_stream import Agent, AgentDone, DraftSpeculator, HistoryPredictor, PredictedCall, Speculator, StepContext
from moa_stream.tools import PURE_METHODS, BfclCase, OnLoop, Tool, ToolCall, ToolSet, bfcl_tools, fresh_instances

from ...bfcl.traces import TraceStep, replay
from .workload import literal_grammar

CALL_SLACK_TOKENS = 8
CACHE_SALT = "agent-bench-speculation"  # every run of a case shares the system prompt's prefix


DRAFT_TOKENS = 48


class UnforcedDraft:
    """The draft speculator on a fork of the agent's sequence, shown the agent's own call grammar (any call of its
    tools), not the trace's forced call: it guesses as a free greedy draft of the same model would."""

    name = "draft"

    def __init__(self, max_tokens: int = DRAFT_TOKENS) -> None:
        self.draft = DraftSpeculator(max_tokens=max_tokens)
        self.grammar: Any = None  # set per agent by run_case (the agent's unforced call grammar)

    async def guess(self, context: StepContext) -> PredictedCall | None:
        """The draft's guess under the agent's free call grammar."""
        return await self.draft.guess(dataclasses.replace(context, structured=self.grammar))

    def observe(self, calls: Sequence[PredictedCall]) -> None:
        """A draft learns nothing from earlier runs."""


# A speculator is built per case from the engine the agents run on. None: the streaming start only.
SpeculatorFactory = Callable[[Engine], Speculator | None]
SPECULATORS: dict[str, SpeculatorFactory] = {
    "history": lambda engine: HistoryPredictor(),
    "draft": lambda engine: UnforcedDraft(),
    "stream-only": lambda engine: None,
}


@dataclass(frozen=True)
class SpeculationBenchConfig:
    """Which latencies, how many cases and steps, and which speculator the speculation section runs."""

    latencies_ms: tuple[float, ...] = (0.0, 200.0, 1000.0)
    cases: int = 2
    steps: int = 6  # at most this many steps of each case
    speculator: str = "history"
    tool_timeout_s: float = 30.0


class TraceAgent(Agent):
    """An Agent whose every step is forced to the trace's next call (the rest of the loop is the Agent's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan: list[ToolCall] = []  # the current turn's calls, in order

    def forced_text(self, step: int) -> str:
        """What the model writes at this step of the turn: the planned call in the agent's call format."""
        call = self.plan[step]
        return self.format.render_call(ToolCall("", call.name, call.arguments))

    def free_grammar(self) -> Any:
        """Any one call of the agent's tools: what an unforced step's draft may write."""
        return self.format.structured(self.tools, "required", False)

    def step_sampling(self, step: int = 0) -> SamplingParams:
        """Greedy, constrained to exactly the planned call."""
        text = self.forced_text(step)
        n = len(self.engine.tokenizer.encode(text, add_special_tokens=False))
        return SamplingParams(max_tokens=n + CALL_SLACK_TOKENS, temperature=0.0, structured=literal_grammar(text))


def _slowed(tool: Tool, latency_s: float) -> Tool:
    """The tool taking `latency_s` more (as a remote API would), its purity unchanged."""
    fn = tool.fn
    assert fn is not None

    async def run(**arguments: Any) -> Any:
        await asyncio.sleep(latency_s)
        return fn(**arguments)

    # On the agent's loop, as BFCL's calls ran before: the benchmark times speculation, not where calls run.
    return Tool(tool.name, tool.description, tool.parameters, run, tool.pure, runner=OnLoop())


def case_tools(case: BfclCase, latency_s: float) -> ToolSet:
    """The case's functions on fresh instances, each with the simulated latency."""
    return ToolSet([_slowed(t, latency_s) for t in bfcl_tools(case, fresh_instances(case))])


def pure_calls(case: BfclCase, steps: Sequence[TraceStep]) -> int:
    """How many of the steps' calls are pure (only those may be started early)."""
    pure = {m for cls in case.involved_classes for m in PURE_METHODS.get(cls, frozenset())}
    return sum(s.call.name in pure for s in steps)


def speculable_cases(cases: Sequence[BfclCase], n: int, steps: int) -> list[tuple[BfclCase, list[TraceStep]]]:
    """The first `n` cases, in order, with a pure call among their first `steps` steps (the rest have none to start)."""
    out = []
    for case in cases:
        trace = list(replay(case).steps[:steps])
        if trace and pure_calls(case, trace):
            out.append((case, trace))
            if len(out) == n:
                break
    return out


def turns(steps: Sequence[TraceStep]) -> list[tuple[str, list[ToolCall]]]:
    """The trace's user turns, each with the calls it led to."""
    out: list[tuple[str, list[ToolCall]]] = []
    for step in steps:
        if step.user or not out:
            out.append((step.user or "Go on.", []))
        out[-1][1].append(step.call)
    return out


@dataclass
class CaseRun:
    """One run of one case: time per step, and the speculation counters the Agent reported."""

    steps: int = 0
    total_s: float = 0.0
    started: int = 0
    taken: int = 0
    hidden_s: float = 0.0
    calls: list[list[PredictedCall]] = field(default_factory=list)  # per turn, as a speculator observes them


async def run_case(engine: Engine, case: BfclCase, steps: Sequence[TraceStep], latency_s: float, *,
                   speculate: bool, speculator: Speculator | None, timeout_s: float) -> CaseRun:
    """Replay the case's turns through one fresh TraceAgent; speculation on when `speculate` (and the speculator)."""
    agent = TraceAgent(engine, case_tools(case, latency_s), speculate=speculate,
                       speculator=speculator if speculate else None, tool_timeout=timeout_s, cache_salt=CACHE_SALT)
    if isinstance(speculator, UnforcedDraft):
        speculator.grammar = agent.free_grammar()
    out = CaseRun()
    try:
        for i, (user, calls) in enumerate(turns(steps)):
            agent.plan, agent.max_steps = calls, len(calls)
            events = agent.run(user) if i == 0 else agent.send(user)
            async for ev in events:
                if isinstance(ev, AgentDone):
                    m = ev.metrics
                    out.steps += len(m.steps)
                    out.total_s += m.total_s
                    out.started += m.speculations_started
                    out.taken += m.speculations_taken
                    out.hidden_s += sum(s.tool_time_hidden_s for s in m.steps)
                    out.calls.append([PredictedCall(c.name, c.arguments) for c in ev.calls])
    finally:
        await agent.aclose()
    return out


@dataclass
class LatencyFigures:
    """Speculation off and on at one tool latency, over every case."""

    latency_ms: float
    off: list[CaseRun] = field(default_factory=list)
    on: list[CaseRun] = field(default_factory=list)

    @staticmethod
    def _per_step(runs: Sequence[CaseRun]) -> float:
        steps = sum(r.steps for r in runs)
        return sum(r.total_s for r in runs) / steps if steps else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """α, time per step off and on, and the fraction saved."""
        off, on = self._per_step(self.off), self._per_step(self.on)
        started, taken = sum(r.started for r in self.on), sum(r.taken for r in self.on)
        return {
            "tool_latency_ms": self.latency_ms,
            "step_s_off": off, "step_s_on": on,
            "saving": 1.0 - on / off if off > 0 else None,
            "alpha": taken / started if started else None,
            "speculations_started": started, "speculations_taken": taken,
            "tool_time_hidden_s": sum(r.hidden_s for r in self.on),
            "steps": sum(r.steps for r in self.on),
        }


async def run_speculation_bench(engine: Engine, cases: Sequence[BfclCase],
                                config: SpeculationBenchConfig) -> dict[str, Any]:
    """Per tool latency, every case with speculation off then on; the section of the bench's JSON."""
    if config.speculator not in SPECULATORS:
        raise ValueError(f"unknown speculator {config.speculator!r}; pick from {', '.join(SPECULATORS)}")
    chosen = speculable_cases(cases, config.cases, config.steps)
    speculators = []
    for case, steps in chosen:  # the warm-up run: pays the one-off prefill and is what the speculator observed
        speculator = SPECULATORS[config.speculator](engine)
        warm = await run_case(engine, case, steps, 0.0, speculate=False, speculator=None,
                              timeout_s=config.tool_timeout_s)
        if speculator is not None:
            for calls in warm.calls:
                speculator.observe(calls)
        speculators.append(speculator)
    figures = []
    for j, latency_ms in enumerate(config.latencies_ms):
        fig = LatencyFigures(latency_ms)
        for i, ((case, steps), speculator) in enumerate(zip(chosen, speculators, strict=True)):
            pair = [(False, fig.off), (True, fig.on)]
            # Which goes first alternates, so a machine slowing down (a shared CPU) favours neither side.
            for speculate, runs in pair if (i + j) % 2 == 0 else pair[::-1]:
                runs.append(await run_case(engine, case, steps, latency_ms / 1000.0, speculate=speculate,
                                           speculator=speculator, timeout_s=config.tool_timeout_s))
        figures.append(fig.to_dict())
    at_200 = next((f for f in figures if f["tool_latency_ms"] == 200.0), None)
    alphas = [f["alpha"] for f in figures if f["alpha"] is not None]
    return {
        "speculation_saving_200ms": at_200["saving"] if at_200 else None,
        "speculation_alpha": statistics.fmean(alphas) if alphas else None,
        "speculation": {
            "latencies": figures,
            "setup": {
                "speculator": config.speculator, "cases": [c.id for c, _ in chosen],
                "steps_per_case": [len(s) for _, s in chosen],
                "pure_calls_per_case": [pure_calls(c, s) for c, s in chosen],
                "case_choice": "the first cases with at least one pure call among their first steps (impure calls "
                               "are never started early; cases without a pure call have nothing to speculate)",
                "starts": "streaming start (the call parses before its closing tokens) and predicted start "
                          f"({config.speculator}), pure tools only, via moa_stream.Agent(speculate=True)",
                "speculator_history": "the speculator observed one earlier (warm-up, untimed) run of the same "
                                      "workflow, as in arXiv 2512.15834's repeated workflows",
                "step_time": "the Agent's turn time over its steps: Δ appended, forced call written, tools run",
                "order": "off and on alternate which runs first per (case, latency)",
            },
        },
    }
