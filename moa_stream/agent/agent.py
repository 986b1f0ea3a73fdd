"""A tool-using agent on a stateful engine: one sequence across every step and turn, each step an O(Δ) append.

A step appends what is new (the user turn, or the last step's tool results), generates (constrained by the call
format's structural tag, so even a small model writes valid calls), then runs the calls while the sequence is
pinned in the engine (up to `pin_ttl`; later it may be evicted and is recomputed transparently). A call that
raises, hangs or names no tool becomes an error result the model reads; the run goes on.

```python
agent = Agent(engine, toolset("bfcl:GorillaFileSystem"))
async for ev in agent.run("List the files here."):
    ...
async for ev in agent.send("Now open the first one."):
    ...
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from engine import Engine, SamplingParams, SequenceStats
from engine import Sequence as EngineSequence

from ..config import AgentConfig, SpeculationConfig
from ..errors import ConfigError
from ..tools import CALL_FORMATS, CallFormat, Tool, ToolCall, ToolChoice, ToolResult, ToolSet, toolset
from ..tools import call_format as make_call_format
from ..tools.call_stream import CallPiece, CallStream
from .agent_context import AgentContext, EventLogContext, MessageContext, ProposalsEventLogContext
from .context import ChatFormat, Message
from .draft_speculator import DraftSpeculator
from .events import AgentDelta, AgentDone, AgentEvent, AgentFinish, AgentRunMetrics, StepDone, StepMetrics
from .executor import ToolExecutor
from .formats import AGENT_FORMATS, agent_format
from .slot import AgentSlot
from .tool_cache import ToolCache
from .tool_speculation import HistoryPredictor, PredictedCall, PredictedStart, SpeculativeCalls, Speculator, StepContext

ToolsArg = ToolSet | Iterable[Tool] | str | None


def as_toolset(tools: ToolsArg, timeout: float | None = None) -> ToolSet:
    """A ToolSet from a ToolSet, Tools, or a spec string (`bfcl:GorillaFileSystem,mod:fn`); None: no tools."""
    if tools is None:
        return ToolSet(timeout=timeout)
    if isinstance(tools, ToolSet):
        return tools
    if isinstance(tools, str):
        return toolset(tools, timeout=timeout)
    return ToolSet(tools, timeout=timeout)


class Agent:
    """A tool-using agent whose conversation lives in one engine sequence (see the module docstring)."""

    def __init__(self, engine: Engine, tools: ToolsArg = None, *, format: str | None = None,
                 call_format: str | CallFormat = "hermes",
                 system_prompt: str | None = None, sampling: SamplingParams | None = None,
                 tool_choice: ToolChoice = "auto", later_tool_choice: ToolChoice | None = None,
                 parallel_calls: bool = True, constrained: bool = True, max_steps: int = 10,
                 tool_timeout: float | None = 30.0, pin_ttl: float | None = 60.0, cache: ToolCache | None = None,
                 name: str = "agent", cache_salt: str | None = None, slot: AgentSlot | None = None,
                 speculate: bool | None = None, speculator: Speculator | None = None,
                 draft_engine: Engine | None = None, proposers: Sequence[AgentConfig] = ()) -> None:
        if max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        self.tools = as_toolset(tools, tool_timeout)
        if not isinstance(format, str | None) or format in CALL_FORMATS:
            raise ConfigError(f"format selects the context format ({', '.join(AGENT_FORMATS)}), got {format!r}; "
                              "a call syntax goes in call_format")
        self.format = make_call_format(call_format)
        self.executor = ToolExecutor(self.tools, timeout=tool_timeout, cache=cache)
        self.slot = slot or AgentSlot(cfg=AgentConfig(name=name, system_prompt=system_prompt, temperature=0.0),
                                      engine=engine, fmt=ChatFormat(engine.tokenizer))
        self.slot.cache_salt = cache_salt or self.slot.cache_salt
        self.sampling = sampling or (self.slot.sampling() if slot is not None else SamplingParams(max_tokens=256))
        self.system_prompt = system_prompt if system_prompt is not None else self.slot.cfg.system_prompt
        self.context_format = format or self.slot.cfg.format
        self.context = self._context(proposers)
        self.tool_choice = tool_choice
        self.later_tool_choice = tool_choice if later_tool_choice is None else later_tool_choice
        self.parallel_calls = parallel_calls  # False: a step ends at its first call (its result comes sooner)
        self.constrained = constrained
        self.max_steps = max_steps
        self.pin_ttl = pin_ttl
        # Speculative tool calls (pure tools only): start a call as soon as the streamed text parses as one, and/or
        # start the speculator's guess while a step decodes; a call takes an early result only on an exact match.
        # Unset, both come from the agent's config (`speculation`).
        spec = self.slot.cfg.speculation
        self.speculate = spec.stream_start if speculate is None else speculate
        self.speculator = speculator if speculator is not None else self._configured_speculator(spec, draft_engine)
        self.history: list[Message] = []  # user turns and final replies (tool traffic lives in the sequence only)
        self._live = False  # the slot's sequence holds `history`
        self._turns = 0
        self._waiting: list[ToolCall] = []  # calls of a run that ended for the caller to run (submit's results)

    @classmethod
    def from_config(cls, cfg: AgentConfig, engine: Engine, *, tools: ToolSet | None = None,
                    slot: AgentSlot | None = None, draft_engine: Engine | None = None, parallel_calls: bool = True,
                    later_tool_choice: ToolChoice | None = "auto") -> Agent:
        """The agent an AgentConfig describes: its tools (unless given, already built), tool choice, steps,
        timeout, cache and speculation."""
        if tools is None and cfg.tools:
            tools = toolset(",".join(cfg.tools), timeout=cfg.tool_timeout_s)
        cache = ToolCache(cfg.tool_cache.entries, cfg.tool_cache.ttl_s) if cfg.tool_cache else None
        slot = slot or AgentSlot(cfg=cfg, engine=engine, fmt=ChatFormat(engine.tokenizer))
        return cls(engine, tools, slot=slot, max_steps=cfg.max_tool_steps, tool_choice=cfg.tool_choice,
                   later_tool_choice=later_tool_choice, parallel_calls=parallel_calls,
                   tool_timeout=cfg.tool_timeout_s, name=cfg.name, draft_engine=draft_engine, cache=cache)

    def _context(self, proposers: Sequence[AgentConfig]) -> AgentContext:
        """Chat messages; or the format's event log, its steps written alone or after the proposers' moves."""
        if not self.context_format:
            if proposers:
                raise ConfigError("proposers write their moves on an agent format's event log: give the agent a "
                                  "format (chat, thread, compact)")
            return MessageContext(self.slot, self.format)
        fmt = agent_format(self.context_format, self.slot.fmt, self.tools, self.system_prompt, answers=True)
        if proposers:
            return ProposalsEventLogContext(self.slot, fmt, proposers)
        return EventLogContext(self.slot, fmt)

    def _configured_speculator(self, spec: SpeculationConfig, draft_engine: Engine | None) -> Speculator | None:
        """The speculator `spec.predict` names; a draft on another backend needs that backend's engine."""
        if spec.predict == "history":
            return HistoryPredictor()
        if spec.predict == "draft":
            if spec.draft_backend not in (None, self.slot.cfg.backend) and draft_engine is None:
                raise ConfigError(f"agent {self.name!r}: speculation.draft_backend {spec.draft_backend!r} needs its "
                                  "engine: pass draft_engine")
            return DraftSpeculator(draft_engine, spec.draft_max_tokens)
        return None

    @property
    def name(self) -> str:
        """The agent's name (events carry it)."""
        return self.slot.cfg.name

    @property
    def engine(self) -> Engine:
        """The engine holding the agent's sequence."""
        return self.slot.engine

    def choice(self, step: int) -> ToolChoice:
        """The tool choice of a turn's step: `tool_choice` first, `later_tool_choice` after."""
        return self.tool_choice if step == 0 else self.later_tool_choice

    def step_sampling(self, step: int = 0) -> SamplingParams:
        """Sampling for one step: the agent's, constrained to valid calls when tools are offered."""
        structured = (self.format.structured(self.tools, self.choice(step), self.parallel_calls)
                      if self.constrained else None)
        return dataclasses.replace(self.sampling, structured=structured)

    def messages(self, text: str, history: Sequence[Message] = ()) -> list[Message]:
        """The chat a new conversation starts from: instructions, any history, the user's text (tools: turn adds)."""
        return [*([Message("system", self.system_prompt)] if self.system_prompt else []), *history,
                Message("user", text)]

    def with_tools(self, messages: Sequence[Message]) -> list[Message]:
        """The messages with the tools and the call syntax in the system prompt (added if there is none)."""
        msgs = list(messages)
        if not len(self.tools):
            return msgs
        if msgs and msgs[0].role == "system":
            return [Message("system", self.format.system_prompt(self.tools, msgs[0].content)), *msgs[1:]]
        return [Message("system", self.format.system_prompt(self.tools)), *msgs]

    async def run(self, task: str) -> AsyncIterator[AgentEvent]:
        """Start a new conversation with `task` and run it to a reply (or the step limit), yielding events."""
        await self.reset()
        async for ev in self.send(task):
            yield ev

    async def send(self, text: str) -> AsyncIterator[AgentEvent]:
        """The next user turn of the conversation (appended: only its tokens are computed)."""
        async for ev in self.turn(self.messages(text), text, reuse=self._live):
            yield ev

    async def turn(self, messages: Sequence[Message], text: str, reuse: bool) -> AsyncIterator[AgentEvent]:
        """One user turn: append `text` to the live sequence if `reuse`, else open `messages` (tools added)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the user turn is empty: pass some text")
        t0 = time.perf_counter()
        self.slot.begin_turn()
        reuse = reuse and self.slot.seq is not None
        base = self.engine.seq_stats(self.slot.seq) if reuse and self.slot.seq is not None else SequenceStats()
        if not reuse:
            self.history = [m for m in messages if m.role != "system"][:-1]
        await self.context.begin(self.with_tools(messages), text, reuse=reuse)
        self.history.append(Message("user", text))
        async for ev in self._steps(t0, base):
            yield ev

    async def submit(self, results: Sequence[ToolResult]) -> AsyncIterator[AgentEvent]:
        """Continue after a run that ended with calls for the caller (`finish == "tool_calls"`) with their results."""
        if not self._live or self.slot.seq is None:
            raise ValueError("no conversation is waiting for tool results; start one with run()")
        t0 = time.perf_counter()
        base = self.engine.seq_stats(self.slot.seq)
        await self.context.add_step(self._waiting, results)
        async for ev in self._steps(t0, base):
            yield ev

    async def _steps(self, t0: float, base: SequenceStats) -> AsyncIterator[AgentEvent]:
        """Steps until a reply without calls, the step limit, or calls only the caller can run.

        The turn's opening append (user text or results), started at `t0` from counters `base`, counts in step 0.
        """
        slot = self.slot
        assert slot.seq is not None
        self._live, finished = False, False  # until the turn completes, the sequence holds a partial turn
        self._turns += 1
        run = AgentRunMetrics(agent=self.name)
        calls_all: list[ToolCall] = []
        results_all: list[ToolResult] = []
        text = answer = ""
        finish: AgentFinish = "answer"
        calls: list[ToolCall] = []
        results: list[ToolResult] = []
        try:
            for step in range(self.max_steps):
                step_t0 = t0 if step == 0 else time.perf_counter()
                metrics = StepMetrics(step=step)
                if step > 0:
                    base = self.engine.seq_stats(slot.seq)
                    await self.context.add_step(calls, results)
                text, reason = "", None
                sampling = self.context.sampling(self.step_sampling(step))
                seq = await self.context.open_step(sampling)
                early, predicted = await self._start_speculation(calls_all, step, sampling, seq)
                splitter = CallStream(self.format) if early is not None and self.speculate else None
                try:
                    async with contextlib.aclosing(self.engine.generate(seq, sampling)) as stream:
                        async for delta in stream:
                            if delta.text:
                                if metrics.ttft_s is None:
                                    metrics.ttft_s = time.perf_counter() - step_t0
                                text += delta.text
                                yield AgentDelta(delta.text, step, self.name)
                                for piece in splitter.feed(delta.text) if splitter else ():
                                    if isinstance(piece, CallPiece) and piece.call.error is None:
                                        early.start(piece.call.name, piece.call.arguments, "stream")  # type: ignore[union-attr]
                            if delta.finish_reason is not None:
                                reason = delta.finish_reason
                                slot.after_eos = (bool(delta.token_ids)
                                                  and delta.token_ids[-1] in self.engine.eos_token_ids)
                finally:
                    if predicted is not None:  # the calls are written: a guess still being made is cancelled
                        await predicted.stop()
                    step_stats = await self.context.close_step(seq)
                metrics.generate_s = time.perf_counter() - step_t0
                metrics.finish_reason = reason
                parsed = self.format.parse(text) if self.choice(step) != "none" and len(self.tools) else []
                calls = [ToolCall(f"call_{self._turns}_{step}_{i}", p.name or "?", p.arguments)
                         for i, p in enumerate(parsed)]
                if not calls:  # a reply in words ends the turn; it joins the context now, counted in this step
                    answer = self.context.reply(text)
                    await self.context.end_turn(answer)
                now = self.engine.seq_stats(slot.seq)
                metrics.prefill_computed = now.prefill_computed - base.prefill_computed + step_stats.prefill_computed
                metrics.prefill_reused = now.prefill_reused - base.prefill_reused + step_stats.prefill_reused
                metrics.decode_tokens = now.decode_tokens - base.decode_tokens + step_stats.decode_tokens
                for c in calls:
                    yield c
                results = []
                if calls:
                    if any(p.error is None and (t := self.tools.get(p.name)) is not None and t.fn is None
                           for p in parsed):
                        finish = "tool_calls"  # declared-only tools: the caller runs them and calls submit()
                    else:
                        results = await self._run_calls(calls, parsed, metrics)
                        for r in results:
                            yield r
                if early is not None:
                    await self._end_speculation(early, metrics, run)
                metrics.calls = len(calls)
                metrics.context_tokens = len(self.engine.tokens(slot.seq))
                calls_all += calls
                results_all += results
                self._add(run, metrics)
                yield StepDone(metrics, self.name)
                if finish == "tool_calls":
                    self._waiting = calls
                    break
                if not calls:
                    finish = "length" if reason == "length" else "answer"
                    break
            else:
                finish = "max_steps"
                await self.context.add_step(calls, results)  # the context stays whole for the next turn
            if self.speculator is not None:  # it may learn the workflow, to predict the next run's calls
                self.speculator.observe([PredictedCall(c.name, c.arguments) for c in calls_all])
            if finish not in ("answer", "length"):
                answer = self.format.strip_calls(text)
            run.finish = finish
            run.total_s = time.perf_counter() - t0
            run.ttft_s = run.steps[0].ttft_s if run.steps else None
            self.history.append(Message("assistant", answer))
            finished = True
            self._live = True
            yield AgentDone(answer, run, tuple(calls_all), tuple(results_all), self.name)
        finally:
            if not finished:  # cancelled or failed halfway: the sequence holds a broken turn, start afresh
                await self.reset()

    async def _start_speculation(self, calls_so_far: Sequence[ToolCall], step: int, sampling: SamplingParams,
                                 seq: EngineSequence) -> tuple[SpeculativeCalls | None, PredictedStart | None]:
        """The step's speculation (None when off) and its speculator's guessing, begun (the sequence released)."""
        if not (self.speculate or self.speculator) or not len(self.tools) or self.choice(step) == "none":
            return None, None  # a step that may not call has nothing to guess
        early = self.executor.speculate()
        if self.speculator is None:
            return early, None
        context = StepContext(tuple(PredictedCall(c.name, c.arguments) for c in calls_so_far), self.engine,
                              seq, tuple(self.engine.tokens(seq)), self.format,
                              sampling.structured, self.slot.cache_salt)
        predicted = PredictedStart(self.speculator, context, early)
        await predicted.begin()
        return early, predicted

    async def _end_speculation(self, early: SpeculativeCalls, metrics: StepMetrics, run: AgentRunMetrics) -> None:
        """Cancel the guesses no call took (their results reach no context) and count the step's speculation."""
        await early.cancel_rest()
        self.executor.speculative = None
        metrics.speculated = early.stats.taken
        metrics.tool_time_hidden_s = early.stats.hidden_seconds
        run.speculations_started += early.stats.started
        run.speculations_taken += early.stats.taken

    async def _run_calls(self, calls: list[ToolCall], parsed: Sequence[Any], metrics: StepMetrics) -> list[ToolResult]:
        """Run the step's readable calls while the sequence is pinned; unreadable ones get their error."""
        assert self.slot.seq is not None
        t = time.perf_counter()
        readable = [c for c, p in zip(calls, parsed, strict=True) if p.error is None]
        await self.engine.pin(self.slot.seq, self.pin_ttl)
        try:
            ran = iter(await self.executor.run(readable))
        finally:
            await self.engine.unpin(self.slot.seq)
        results = [next(ran) if p.error is None else ToolResult(c.id, c.name, error=p.error)
                   for c, p in zip(calls, parsed, strict=True)]
        metrics.tools_s = time.perf_counter() - t
        metrics.tool_errors = sum(not r.ok for r in results)
        metrics.cached = sum(r.cached for r in results)
        return results

    @staticmethod
    def _add(run: AgentRunMetrics, step: StepMetrics) -> None:
        run.steps.append(step)
        run.tools_s += step.tools_s
        run.prefill_computed += step.prefill_computed
        run.prefill_reused += step.prefill_reused
        run.decode_tokens += step.decode_tokens
        run.tool_calls += step.calls
        run.tool_errors += step.tool_errors
        run.tool_cache_hits += step.cached

    async def reveal(self, tools: ToolsArg) -> None:
        """Offer more tools from the next step on: a live conversation reads them as an event (its context is
        appended to, not rebuilt); a new one lists them from the start."""
        new = ToolSet([t for t in as_toolset(tools) if t.name not in self.tools], timeout=self.tools.timeout)
        if not len(new):
            return
        self.tools = self.tools | new
        self.executor.tools = self.tools
        await self.context.reveal(new, self.tools, live=self._live)

    async def reset(self) -> None:
        """Forget the conversation and free its sequence."""
        await self.slot.reset()
        self.history = []
        self._live = False

    async def aclose(self) -> None:
        """Free the agent's sequence (the engine stays up)."""
        await self.reset()

