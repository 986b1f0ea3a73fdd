"""What a MoA turn and an agent share: the slot that keeps one agent's sequence alive, its chunks and failures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine import Engine, SamplingParams, Sequence, SequenceStats

from ..config import AgentConfig, StaircaseConfig
from ..events import AgentError, Event, ProposerDelta
from .context import ChatFormat, Message

Emit = Callable[[Event], None]


@dataclass
class AgentSlot:
    """One agent bound to its engine; `seq` survives between turns of a conversation."""

    cfg: AgentConfig
    engine: Engine
    fmt: ChatFormat
    layer: int = 0
    seq: Sequence | None = None
    after_eos: bool = False
    layout: str | None = None  # which context layout `seq` holds (aggregator: the mode that built it)
    # Per-turn accounting: counters at the turn's start for each sequence used, and those already closed.
    opened: list[Sequence] = field(default_factory=list)
    turn_base: dict[int, SequenceStats] = field(default_factory=dict)
    closed_stats: list[SequenceStats] = field(default_factory=list)
    prompt_tokens: int = 0  # context length when the turn's first sequence was ready
    cache_salt: str | None = None  # the tenant's prefix-cache salt, passed to every engine.open
    tool_agent: Any = None  # a proposer with tools: its moa_stream.agent.agent.Agent, made on its first turn
    draft_engine: Engine | None = None  # speculation.draft_backend's engine, when the draft runs on another backend

    def sampling(self, max_tokens: int | None = None) -> SamplingParams:
        """SamplingParams from the agent's config."""
        return self.cfg.sampling(max_tokens)

    async def start(self, messages: list[Message], question: str, reuse: bool, marker: str | None = None) -> list[int]:
        """Make `seq` end with the assistant prompt for `question`: append a turn if possible, else open.

        With a marker (text inside the last message), stop there and return the tokens after it: the caller
        appends them later, so the head is computed while the rest is still being written.
        """
        if reuse and self.seq is not None:
            self._track(self.seq)
            head, tail = self.fmt.next_turn_split(question, self.after_eos, marker)
        else:
            head, tail = self.fmt.prompt_split(messages, marker)
        if marker is None:
            head, tail = head + tail, []
        if reuse and self.seq is not None:
            await self.engine.append(self.seq, head)
        else:
            await self.open_fresh(head)
        self.after_eos = False
        assert self.seq is not None
        self.prompt_tokens = len(self.engine.tokens(self.seq)) + len(tail)
        return tail

    async def open_fresh(self, tokens: list[int]) -> Sequence:
        """Replace `seq` with a new sequence of these tokens (layouts that rewrite the prompt)."""
        await self.reset()
        self.seq = await self.engine.open(tokens, cache_salt=self.cache_salt)
        self._track(self.seq, fresh=True)
        self.prompt_tokens = self.prompt_tokens or len(tokens)
        return self.seq

    def _track(self, seq: Sequence, fresh: bool = False) -> None:
        if seq not in self.opened:
            self.opened.append(seq)
            self.turn_base[seq.id] = SequenceStats() if fresh else self.engine.seq_stats(seq)

    def _delta(self, seq: Sequence) -> SequenceStats:
        now, base = self.engine.seq_stats(seq), self.turn_base.get(seq.id, SequenceStats())
        return SequenceStats(now.prefill_computed - base.prefill_computed, now.prefill_reused - base.prefill_reused,
                             now.decode_tokens - base.decode_tokens)

    def context_tokens(self) -> int:
        """Length of the live sequence (0 if none)."""
        return len(self.engine.tokens(self.seq)) if self.seq is not None else 0

    def turn_stats(self) -> SequenceStats:
        """Prefill computed/reused and decode tokens of this agent during the current turn."""
        total = SequenceStats()
        parts = list(self.closed_stats)
        if self.seq is not None:
            parts.append(self._delta(self.seq))
        for p in parts:
            total.prefill_computed += p.prefill_computed
            total.prefill_reused += p.prefill_reused
            total.decode_tokens += p.decode_tokens
        return total

    def begin_turn(self) -> None:
        """Forget the previous turn's accounting."""
        self.opened.clear()
        self.prompt_tokens = 0
        self.turn_base.clear()
        self.closed_stats.clear()

    async def reset(self) -> None:
        """Close the live sequence (its counters are kept for this turn's metrics)."""
        if self.seq is not None:
            if self.seq in self.opened:  # keep its counters: reprefill layouts close a sequence per step
                self.closed_stats.append(self._delta(self.seq))
            seq, self.seq, self.layout = self.seq, None, None
            await self.engine.close(seq)


@dataclass(frozen=True)
class Chunk:
    """A piece of one proposal: `final` marks the last piece (possibly empty)."""

    proposer: int
    index: int
    text: str
    tokens: int
    final: bool


@dataclass(frozen=True)
class Failure:
    """A proposer stopped without finishing."""

    proposer: int
    error: str
    cause: Exception | None = None  # what stopped it: a run whose proposers all failed is raised from the last one


@dataclass
class ProposalResult:
    """What a proposer produced in this turn."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


class ChunkOut(Protocol):
    """Where a proposer's chunks go: a queue, or a fan-out to every reader of its layer."""

    def put_nowait(self, item: Chunk | Failure) -> None:
        """Hand over one chunk or failure (never blocks)."""


@dataclass
class ProposerRun:
    """One proposer's part in a turn: the agent, what it answers, and where its text goes."""

    slot: AgentSlot
    idx: int  # its position in its layer: what its readers call it
    messages: list[Message]
    question: str
    reuse: bool  # a conversation: extend the agent's live sequence instead of opening one
    knobs: StaircaseConfig
    out: ChunkOut
    emit: Emit
    t0: float  # perf_counter() when the turn began
    result: ProposalResult


class ChunkWriter:
    """A proposal cut into chunks as it is written: a ProposerDelta per piece of text, a chunk each time one fills.

    Every kind of proposer writes through one: a plain one, one with tools, and a later-layer reader.
    """

    def __init__(self, run: ProposerRun) -> None:
        self.run = run
        self.index, self.text, self.tokens = 0, "", 0  # the chunk being filled

    def said(self, text: str, tokens: int) -> Chunk | None:
        """Book new text and the tokens it took; the chunk that went out if this filled one."""
        self.add(text, tokens)
        return self.cut()

    def add(self, text: str, tokens: int) -> None:
        """Book new text and the tokens it took into the chunk being filled (a delta event for the text)."""
        run = self.run
        self.tokens += tokens
        if text:
            self.text += text
            run.result.text += text
            run.emit(ProposerDelta(run.slot.cfg.name, run.slot.layer, text, time.perf_counter() - run.t0))

    def cut(self) -> Chunk | None:
        """Send the chunk being filled if it has reached its size; the chunk sent, if any."""
        return self._send(final=False) if self.tokens >= self.run.knobs.chunk_size(self.index) else None

    def ended(self) -> Chunk:
        """Send what is left as the last chunk (maybe empty)."""
        return self._send(final=True)

    def failed(self, exc: Exception) -> None:
        """The proposer stopped: an AgentError (a timeout names the silence), and a Failure for its readers."""
        run = self.run
        timed_out = isinstance(exc, TimeoutError)
        why = f"no output for {run.knobs.agent_timeout_s:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
        run.result.error = why
        run.emit(AgentError(run.slot.cfg.name, run.slot.layer, why, "timeout" if timed_out else "exception"))
        run.out.put_nowait(Failure(run.idx, why, exc))

    def _send(self, final: bool) -> Chunk:
        chunk = Chunk(self.run.idx, self.index, self.text, self.tokens, final=final)
        self.run.out.put_nowait(chunk)
        self.index, self.text, self.tokens = self.index + 1, "", 0
        return chunk
