"""An agent reading a layer's proposals as they stream, through one layout, and writing its own text in steps.

The aggregator is a reader of the last proposer layer; with `layers:` of length L > 1, every proposer of layer
l + 1 is a reader of layer l, so the whole pipeline is one staircase. A reader starts when its start policy holds
on its layer's first chunks (at once with `at_once`; once every proposal is over, for a layout that is not
incremental), writes its text in steps of `aggregator_tokens_per_intake` tokens and, between steps, hands the
chunks that arrived to its layout (by KV append: each intake computes its Δ). Where its text goes is its sink's
business: the answer's events (`AnswerSink`), or chunks for the next layer's readers (`ProposalSink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import StructuredOutput, TokenDelta

from ..agent.slot import Chunk, ChunkWriter, Emit, Failure, ProposerRun
from ..config import StaircaseConfig
from ..errors import MoAError
from ..events import AggregatorDelta, ChunkIngested, FirstToken
from .layouts import AggregatorLayout, Answer, IncrementalLayout
from .pacing import Pacing


@dataclass
class Proposals:
    """The proposers of one layer as one reader sees them: their chunks in arrival order, what each wrote."""

    names: list[str]
    layer: int
    queue: asyncio.Queue[Chunk | Failure] = field(default_factory=asyncio.Queue)
    texts: list[str] = field(default_factory=list)  # ingested text per proposer
    ready: set[int] = field(default_factory=set)  # has a first chunk (or finished)
    done: set[int] = field(default_factory=set)  # finished or failed
    failed: set[int] = field(default_factory=set)
    last_failure: Failure | None = None

    def __post_init__(self) -> None:
        self.texts = [""] * self.n

    @property
    def n(self) -> int:
        """How many proposers the layer has."""
        return len(self.names)

    @property
    def all_done(self) -> bool:
        """Whether every proposal is over (finished or failed)."""
        return len(self.done) == self.n

    def take(self, item: Chunk | Failure) -> Chunk | None:
        """Book one arrival; the chunk, or None for a failure."""
        if isinstance(item, Failure):
            self.failed.add(item.proposer)
            self.last_failure = item
            self.done.add(item.proposer)
            return None
        self.ready.add(item.proposer)
        if item.final:
            self.done.add(item.proposer)
        return item

    def check_alive(self) -> None:
        """Raise MoAError once every proposer of the layer failed."""
        if len(self.failed) == self.n:
            cause = self.last_failure.cause if self.last_failure else None
            # Chained, so callers (the server) can tell a prompt that cannot fit from a broken backend.
            raise MoAError(f"all {self.n} proposers failed; see the agent_error events for why") from cause


class Fanout:
    """Where one layer's proposers put their chunks: every reader of the layer gets each one, in order."""

    def __init__(self, readers: list[Proposals]) -> None:
        self.readers = readers

    def put_nowait(self, item: Chunk | Failure) -> None:
        """Hand the chunk or failure to every reader."""
        for props in self.readers:
            props.queue.put_nowait(item)


class Sink(ABC):
    """Where a reader's text goes as it is written."""

    @abstractmethod
    def said(self, text: str, tokens: int) -> None:
        """New text (after the layout's marker filter) and the tokens it took."""

    def ended(self, reason: str | None) -> None:  # noqa: B027 - the answer's end needs nothing
        """The text is complete."""


class AnswerSink(Sink):
    """The aggregator's text: the answer the user reads (FirstToken once, then AggregatorDelta events)."""

    def __init__(self, emit: Emit, now: Callable[[], float]) -> None:
        self._emit, self._now = emit, now
        self.text = ""
        self.ttft: float | None = None

    def said(self, text: str, tokens: int) -> None:
        """Emit the text; the first text is the first token."""
        if not text:
            return
        if self.ttft is None:
            self.ttft = self._now()
            self._emit(FirstToken(self.ttft))
        self.text += text
        self._emit(AggregatorDelta(text, self._now()))


class ProposalSink(Sink):
    """A later-layer proposer's text: ProposerDelta events, and chunks for the next layer's readers."""

    def __init__(self, run: ProposerRun) -> None:
        self.run = run
        self.writer = ChunkWriter(run)

    def said(self, text: str, tokens: int) -> None:
        """Book the text; a chunk goes out each time one fills."""
        self.run.result.tokens += tokens
        self.writer.said(text, tokens)

    def ended(self, reason: str | None) -> None:
        """The last chunk (maybe empty), marked final."""
        self.run.result.finish_reason = reason
        self.writer.ended()


class Reader:
    """One agent reading one layer's proposals through `layout` and writing its text to `sink`."""

    def __init__(self, layout: AggregatorLayout, props: Proposals | None, knobs: StaircaseConfig, budget: int,
                 sink: Sink, emit: Emit, t0: float, pacing: Pacing | None = None,
                 structured: StructuredOutput | None = None, prime_gate: asyncio.Lock | None = None) -> None:
        self.layout = layout
        self.slot = layout.agg
        self.props = props
        self.knobs = knobs
        self.budget = budget
        self.sink = sink
        self._emit = emit
        self.t0 = t0
        self.pacing = pacing
        self.structured = structured
        # The readers of one turn prime one at a time: those whose prompts open alike (a layer's readers and the
        # aggregator on the shifted layout) then find the head the first one computed in the prefix cache.
        self.prime_gate = prime_gate or asyncio.Lock()
        self.answer = Answer()
        self.finish_reason: str | None = None
        self.chunks_ingested = 0
        self._ended = False  # the opening step ended the text already

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    async def to_start(self) -> None:
        """Read the proposals as far as the layout needs to start, and start it (its prime runs meanwhile)."""
        layout, props = self.layout, self.props
        if props is None or not layout.reads_proposals:
            await layout.start([])
            return
        prime = asyncio.create_task(self._prime(), name=f"{self.slot.cfg.name}-prime")
        try:
            if isinstance(layout, IncrementalLayout):
                for chunk in await self._wait_start(props):
                    self._ingest(props, chunk)
            else:
                await self._wait_all(props)
            await prime
        finally:
            if not prime.done():  # the reader was cancelled or its layer failed while the prime ran
                prime.cancel()
                await asyncio.gather(prime, return_exceptions=True)
        await layout.start(props.texts)

    async def _prime(self) -> None:
        async with self.prime_gate:
            await self.layout.prime()

    async def write_opening(self) -> bool:
        """Write the text's first token before any proposal is read (start_policy at_once); whether it goes on."""
        produced, reason = await self._generate(1)
        self.budget -= produced
        # An end of text as the first token ends it in every layout: there is nothing yet for chunks to continue.
        self._ended = self.budget <= 0 or (reason == "stop" and self.slot.after_eos)
        return not self._ended

    async def write(self) -> None:
        """Write the text: in steps with intakes between them (incremental layouts), else in one go."""
        layout, props = self.layout, self.props
        if self._ended:
            pass  # the opening was the whole text
        elif props is not None and layout.reads_proposals and isinstance(layout, IncrementalLayout):
            if self.pacing is not None:
                self.pacing.start_answer()
            await self._write_with_intakes(layout, props)
        else:
            await self._generate(self.budget)
        self.sink.said(layout.filter.flush(), 0)
        self.sink.ended(self.finish_reason)

    async def _write_with_intakes(self, layout: IncrementalLayout, props: Proposals) -> None:
        """Write in steps; between steps, hand the chunks that arrived to the layout."""
        slot, knobs = self.slot, self.knobs
        budget = self.budget
        while budget > 0:
            step = budget if props.all_done else min(budget, knobs.aggregator_tokens_per_intake)
            produced, reason = await self._generate(step)
            budget -= produced
            if budget <= 0:
                break  # nothing more will be written: what arrives now would be read for nothing
            eos = reason == "stop" and slot.after_eos
            asked = reason == "stop" and not slot.after_eos  # it wrote a block marker: it wants more to read
            # An EOS that ends only a turn: the chunks still to come may continue the text.
            read_on = eos and layout.eos_ends_turn_only and knobs.read_every_proposal
            # Pacing: while proposals stream, write at most one step ahead of what has been read.
            wait = asked or read_on or (knobs.pace and reason == "length")
            waited = await self._next_chunk(props) if wait and props.queue.empty() else []
            pending = waited + self._drain(props)
            if reason == "stop" and not pending:
                break
            if eos and not layout.eos_ends_turn_only:  # text after the EOS would sit outside the text's turn
                break
            if pending:
                await layout.intake(pending, props.texts, self.answer)

    async def _generate(self, max_tokens: int) -> tuple[int, str | None]:
        """Generate up to max_tokens tokens into the sink; returns (tokens, finish reason).

        A marker written by the model ends the step with reason "stop" (in `blocks`: it wants more to read)."""
        slot = self.slot
        assert slot.seq is not None
        produced, reason = 0, None
        delta: TokenDelta
        text_filter = self.layout.filter
        sampling = slot.sampling(max_tokens)
        if self.structured is not None:
            # A text written over several generations (intakes between them) is one output to its grammar:
            # each generation resumes it after the text so far (an end-of-turn token only ended a turn).
            eos = slot.engine.eos_token_ids
            sampling = dataclasses.replace(sampling, structured=self.structured,
                                           structured_resume=tuple(t for t in self.answer.ids if t not in eos))
        async with contextlib.aclosing(slot.engine.generate(slot.seq, sampling)) as stream:
            async for delta in stream:
                produced += len(delta.token_ids)
                self.answer.ids.extend(delta.token_ids)
                reason = delta.finish_reason
                text, marker = text_filter.push(delta.text) if delta.text else ("", False)
                self.answer.text += text
                self.sink.said(text, len(delta.token_ids))
                if marker:
                    reason = "stop"
                    break
        slot.after_eos = bool(self.answer.ids) and self.answer.ids[-1] in slot.engine.eos_token_ids
        self.finish_reason = reason
        return produced, reason

    # ------------------------------------------------------------------ reading

    def _ingest(self, props: Proposals, chunk: Chunk) -> None:
        if self.pacing is not None:
            self.pacing.took(chunk.proposer)
        props.texts[chunk.proposer] += chunk.text
        if chunk.text or chunk.final:
            self.chunks_ingested += 1 if chunk.text else 0
            self._emit(ChunkIngested(props.names[chunk.proposer], props.layer, chunk.index, chunk.tokens,
                                     self._now(), chunk.final, reader=self.slot.cfg.name))

    async def _wait_start(self, props: Proposals) -> list[Chunk]:
        """Collect chunks until the start policy holds; returns the chunks taken so far."""
        knobs = self.knobs
        taken: list[Chunk] = []
        if knobs.start_policy == "at_once":
            return taken  # the text starts on the question alone; every chunk is read as it arrives
        while True:
            live = props.n - len(props.failed)
            ready = len(props.ready - props.failed)
            if knobs.start_policy == "all":
                need = live
            elif knobs.start_policy == "quorum":
                need = min(knobs.quorum or 1, live)
            else:
                need = min(1, live)
            props.check_alive()
            if ready >= need and (ready > 0 or props.all_done):
                return taken
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                taken.append(chunk)

    async def _wait_all(self, props: Proposals) -> None:
        """Ingest every chunk until every proposal is over."""
        while not props.all_done:
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                self._ingest(props, chunk)
        props.check_alive()

    async def _next_chunk(self, props: Proposals) -> list[Chunk]:
        """Wait for the next chunk with text, ingested; [] once every proposal is over."""
        while not props.all_done:
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                self._ingest(props, chunk)
                if chunk.text:
                    return [chunk]
        props.check_alive()
        return []

    def _drain(self, props: Proposals) -> list[Chunk]:
        """Every chunk that has arrived, ingested (without waiting for more)."""
        out = []
        while not props.queue.empty():
            chunk = props.take(props.queue.get_nowait())
            if chunk is not None:
                self._ingest(props, chunk)
                if chunk.text:
                    out.append(chunk)
        props.check_alive()
        return out
