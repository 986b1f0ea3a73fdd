"""Where a tool agent's conversation lives in its sequence: chat messages, or an agent format's event log.

The agent loop is the same for both; what differs is how a turn begins, where a step generates, how a step's
calls and results are added, and what ends a turn:

- `MessageContext` (no `format`): the conversation as chat messages through the model's template; a step
  generates in place, so the model's own tokens stay in the sequence, and results follow as a user turn.
- `EventLogContext` (`format: chat | thread | compact`): the sequence holds the format's prefix and one rendering
  per event, never a cue; a step generates on a fork that holds the cue (a fork computes nothing), and the
  step's call and result, or the reply in words, are then appended as events. The cost a step adds is its cue
  and the rendered call: a few tokens, never a re-read.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from engine import Engine, SamplingParams, SequenceStats
from engine import Sequence as EngineSequence

from ..config import AgentConfig
from ..errors import ConfigError
from ..tools import CallFormat, ToolCall, ToolResult, ToolSet
from .context import Message
from .formats import (
    AgentFormat,
    AnswerEvent,
    CallEvent,
    ErrorEvent,
    HistoryEvent,
    ResultEvent,
    ToolsEvent,
    UserTurn,
    json_line,
)
from .slot import AgentSlot


class AgentContext(Protocol):
    """How the agent loop reads and grows one conversation's sequence."""

    async def begin(self, messages: Sequence[Message], text: str, reuse: bool) -> None:
        """Start a user turn: append `text` to the live conversation if `reuse`, else open `messages`."""

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """A step's sampling with the context's own stop strings."""

    async def open_step(self, sampling: SamplingParams) -> EngineSequence:
        """The sequence the step generates on (with `sampling`)."""

    async def close_step(self, seq: EngineSequence) -> SequenceStats:
        """Done with a step's sequence: what it computed beyond the conversation's own sequence."""

    async def add_step(self, calls: Sequence[ToolCall], results: Sequence[ToolResult]) -> None:
        """Append a step's calls (when the context keeps them) and their results."""

    async def end_turn(self, answer: str) -> None:
        """The turn ended with this reply in words."""

    def reply(self, text: str) -> str:
        """The step's text as the reply the user sees."""

    async def reveal(self, new: ToolSet, every: ToolSet, live: bool) -> None:
        """Tools `new` are offered from now on (`every`: all the agent has now)."""


class MessageContext:
    """The conversation as chat messages; a step writes into the sequence itself (see the module docstring)."""

    def __init__(self, slot: AgentSlot, calls: CallFormat) -> None:
        self.slot = slot
        self.calls = calls

    async def begin(self, messages: Sequence[Message], text: str, reuse: bool) -> None:
        """Append a user turn, or open the chat (tools in the system prompt)."""
        await self.slot.start(list(messages), text, reuse=reuse)

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """The agent's sampling as it is."""
        return params

    async def open_step(self, sampling: SamplingParams) -> EngineSequence:
        """The conversation's sequence: the step's tokens stay in it."""
        assert self.slot.seq is not None
        return self.slot.seq

    async def close_step(self, seq: EngineSequence) -> SequenceStats:
        """Nothing beyond the sequence itself."""
        return SequenceStats()

    async def add_step(self, calls: Sequence[ToolCall], results: Sequence[ToolResult]) -> None:
        """The results as the next user turn (the calls are already in the model's answer)."""
        assert self.slot.seq is not None
        tokens = self.slot.fmt.next_turn(self.calls.render_results(results), self.slot.after_eos)
        await self.slot.engine.append(self.slot.seq, tokens)
        self.slot.after_eos = False

    async def end_turn(self, answer: str) -> None:
        """The answer is already in the sequence."""

    def reply(self, text: str) -> str:
        """The model's text without its calls."""
        return self.calls.strip_calls(text)

    async def reveal(self, new: ToolSet, every: ToolSet, live: bool) -> None:
        """A live chat cannot take tools mid-conversation (its system prompt lists them); a new one lists all."""
        if live:
            raise ConfigError("tools can join a live conversation only on an agent format's event log: give the "
                              "agent a format (chat, thread, compact)")


class EventLogContext:
    """The conversation as an agent format's event log, each step on a fork (see the module docstring)."""

    def __init__(self, slot: AgentSlot, fmt: AgentFormat) -> None:
        self.slot = slot
        self.fmt = fmt

    @property
    def engine(self) -> Engine:
        """The engine holding the log."""
        return self.slot.engine

    async def add(self, *events: HistoryEvent) -> None:
        """Append events to the log (only their tokens are computed)."""
        assert self.slot.seq is not None
        tokens = [t for ev in events for t in self.fmt.append(ev)]
        if tokens:
            await self.engine.append(self.slot.seq, tokens)

    async def begin(self, messages: Sequence[Message], text: str, reuse: bool) -> None:
        """Append the user turn; a new conversation first opens the prefix and replays any earlier messages."""
        if not reuse or self.slot.seq is None:
            await self.slot.open_fresh(self.fmt.prefix())
            earlier = [UserTurn(m.content) if m.role == "user" else AnswerEvent(m.content)
                       for m in messages[:-1] if m.role in ("user", "assistant")]
            await self.add(*earlier)
        await self.add(UserTurn(text))

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """One call a step (the format's stop), or a reply that ends where the format's log would go on."""
        return dataclasses.replace(params, stop=(*params.stop, *self.fmt.stop(), *self.fmt.answer_stops()))

    async def open_step(self, sampling: SamplingParams) -> EngineSequence:
        """A fork of the log with the format's cue."""
        return await self._fork(self.fmt.cue())

    async def _fork(self, tokens: list[int]) -> EngineSequence:
        assert self.slot.seq is not None
        fork = await self.engine.fork(self.slot.seq)
        if tokens:
            await self.engine.append(fork, tokens)
        return fork

    async def close_step(self, seq: EngineSequence) -> SequenceStats:
        """Close the fork; its counters are the cue and the step's tokens."""
        stats = self.engine.seq_stats(seq)
        await self.engine.close(seq)
        return stats

    async def add_step(self, calls: Sequence[ToolCall], results: Sequence[ToolResult]) -> None:
        """Each call as the model writes it, then its result or error."""
        events: list[HistoryEvent] = []
        for call, result in zip(calls, results, strict=True):
            events.append(CallEvent(ToolCall("", call.name, call.arguments)))
            events.append(ResultEvent(call.name, result.result) if result.ok
                          else ErrorEvent(call.name, result.error or "failed"))
        await self.add(*events)

    async def end_turn(self, answer: str) -> None:
        """The reply joins the log, so the next user turn follows it."""
        await self.add(AnswerEvent(answer))

    async def reveal(self, new: ToolSet, every: ToolSet, live: bool) -> None:
        """A ToolsEvent in the live log (its prefix stays as it was); a new log's prefix lists them all."""
        self.fmt.tools = every
        if live:
            await self.add(ToolsEvent.of(new))

    def reply(self, text: str) -> str:
        """The format's reading of a reply in words."""
        return self.fmt.read_answer(self.fmt.calls.strip_calls(text))


class ProposalsEventLogContext(EventLogContext):
    """A MoA tool agent on one event log: at each step every proposer writes its next move on its own fork of the
    log (with its temperature and seed, under the same call constraint), and the agent writes the step on a fork
    that holds the proposals (the format's `proposals_cue`). The proposers' forks cost their cue and their tokens."""

    def __init__(self, slot: AgentSlot, fmt: AgentFormat, proposers: Sequence[AgentConfig]) -> None:
        super().__init__(slot, fmt)
        self.proposers = list(proposers)
        self._spent = SequenceStats()  # what this step's proposers computed
        self._steps = 0

    async def _propose(self, cfg: AgentConfig, sampling: SamplingParams) -> str:
        """One proposer's move as the aggregator reads it: its call, or its words."""
        seed = None if cfg.seed is None else cfg.seed + self._steps  # a new draw each step, the same on a rerun
        params = dataclasses.replace(sampling, temperature=cfg.temperature, top_p=cfg.top_p, min_p=cfg.min_p,
                                     seed=seed)
        fork = await self._fork(self.fmt.cue())
        try:
            text = "".join([d.text async for d in self.engine.generate(fork, params)])
            stats = self.engine.seq_stats(fork)
        finally:
            await self.engine.close(fork)
        self._spent = _plus(self._spent, stats)
        call, _ = self.fmt.read_call(text)
        if call is not None:  # as the next-step eval shows proposals: the call as one line of JSON
            return json_line({"name": call.name, "arguments": call.arguments})
        return f"(no call; a reply) {self.reply(text)}"

    async def open_step(self, sampling: SamplingParams) -> EngineSequence:
        """The proposers' moves, written side by side, then the aggregator's fork holding them."""
        self._spent = SequenceStats()
        self._steps += 1
        proposals = await asyncio.gather(*(self._propose(p, sampling) for p in self.proposers))
        return await self._fork(self.fmt.proposals_cue(proposals))

    async def close_step(self, seq: EngineSequence) -> SequenceStats:
        """The aggregator's fork and every proposer's."""
        return _plus(await super().close_step(seq), self._spent)


def _plus(a: SequenceStats, b: SequenceStats) -> SequenceStats:
    return SequenceStats(a.prefill_computed + b.prefill_computed, a.prefill_reused + b.prefill_reused,
                         a.decode_tokens + b.decode_tokens)
