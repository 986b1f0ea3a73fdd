"""One MoA turn: proposers stream chunks, the aggregator's layout takes them in, the answer is sampled.

The driver is the same for every mode: it runs the proposer layers, waits for the start policy (or for every
proposal, when the layout is not incremental), samples the answer in steps and hands chunks that arrived
between steps to the layout. What the aggregator's context holds is the layout's business (moa_stream/moa/layouts/).
Earlier proposer layers (L > 1) always run to completion first: layer l+1 reads layer l as in classic MoA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

from engine import StructuredOutput, TokenDelta

from ..agent.slot import AgentSlot, Chunk, Emit, Failure, ProposalResult
from ..config import StaircaseConfig
from ..errors import MoAError
from ..events import AgentMetrics, AggregatorDelta, ChunkIngested, Done, FirstToken, Metrics
from .context import Message
from .layouts import AggregatorLayout, Answer, IncrementalLayout, layout_for
from .layouts.references import aggregate_system
from .pacing import Pacing
from .proposer import run_proposer


@dataclass
class TurnInput:
    """What a turn answers and how."""

    question: str
    history: list[Message]
    mode: str  # a registered layout name (one of MODES for the built-in ones)
    knobs: StaircaseConfig
    max_tokens: int | None = None
    reuse: bool = False  # a conversation: agents' live sequences may be extended instead of re-opened
    cache_salt: str | None = None  # only sequences of the same salt (tenant) share prefix-cache blocks
    structured: StructuredOutput | None = None  # the answer's constraint (a response format, tool calls)


@dataclass
class _Proposals:
    """The proposers of the last layer as the aggregator sees them."""

    n: int
    queue: asyncio.Queue[Chunk | Failure] = field(default_factory=asyncio.Queue)
    texts: list[str] = field(default_factory=list)  # ingested text per proposer
    ready: set[int] = field(default_factory=set)  # has a first chunk (or finished)
    done: set[int] = field(default_factory=set)  # finished or failed
    failed: set[int] = field(default_factory=set)
    last_failure: Failure | None = None

    def __post_init__(self) -> None:
        self.texts = [""] * self.n

    @property
    def all_done(self) -> bool:
        return len(self.done) == self.n

    def take(self, item: Chunk | Failure) -> Chunk | None:
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
        if len(self.failed) == self.n:
            cause = self.last_failure.cause if self.last_failure else None
            # Chained, so callers (the server) can tell a prompt that cannot fit from a broken backend.
            raise MoAError(f"all {self.n} proposers failed; see the agent_error events for why") from cause


class Turn:
    """Runs one turn and emits its events; the caller owns the agent slots and their lifetime."""

    def __init__(self, proposer_layers: list[list[AgentSlot]], aggregator: AgentSlot, inp: TurnInput,
                 emit: Emit) -> None:
        self.layers = proposer_layers
        self.agg = aggregator
        self.inp = inp
        self.layout: AggregatorLayout = layout_for(inp.mode, aggregator.engine)(aggregator, inp)
        self._emit = emit
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.answer = Answer()
        self.finish_reason: str | None = None
        self.chunks_ingested = 0
        self.results: dict[str, ProposalResult] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The last layer's throttle while the answer is written (incremental layouts; see moa_stream/moa/pacing.py).
        lead = inp.knobs.proposer_lead_chunks if isinstance(self.layout, IncrementalLayout) else None
        self.pacing = Pacing(len(proposer_layers[-1]), lead)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ driver

    async def run(self) -> Done:
        """Run the turn to its Done event (also emitted)."""
        try:
            props = await self._to_answer_start()
            if props is not None and isinstance(self.layout, IncrementalLayout):
                self.pacing.start_answer()
                await self._answer_with_intakes(self.layout, props)
            else:
                await self._answer(self._budget())
        finally:
            await self._stop_tasks()
        self._say(self.layout.filter.flush())
        done = Done(self.answer.text, self._metrics())
        self._emit(done)
        return done

    async def run_to_answer_start(self) -> float:
        """Run the turn up to where the aggregator would sample its first answer token, and stop there.

        The aggregator's sequence then holds exactly the context the mode answers from (proposers still
        streaming are cancelled); returns the seconds it took. Option scoring reads the context here.
        """
        try:
            await self._to_answer_start()
            return self._now()
        finally:
            await self._stop_tasks()

    async def _to_answer_start(self) -> _Proposals | None:
        """Proposers launched and read as the layout wants, the answer's prompt in place; their state if any."""
        for slot in [*(s for layer in self.layers for s in layer), self.agg]:
            slot.begin_turn()
            slot.cache_salt = self.inp.cache_salt
        layout = self.layout
        if not layout.reads_proposals:
            await layout.start([])
            return None
        refs = await self._earlier_layers()
        props = self._launch(self.layers[-1], refs, self.pacing)
        prime = asyncio.create_task(layout.prime(), name="aggregator-prime")
        self._tasks.append(prime)
        if isinstance(layout, IncrementalLayout):
            for chunk in await self._wait_start(props):
                self._ingest(props, chunk)
        else:
            await self._wait_all(props)
        await prime
        await layout.start(props.texts)
        return props

    async def _stop_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer_with_intakes(self, layout: IncrementalLayout, props: _Proposals) -> None:
        """Answer in steps; between steps, hand the chunks that arrived to the layout."""
        slot = self.agg
        budget = self._budget()
        while budget > 0:
            step = budget if props.all_done else min(budget, self.inp.knobs.aggregator_tokens_per_intake)
            produced, reason = await self._answer(step)
            budget -= produced
            eos = reason == "stop" and slot.after_eos
            asked = reason == "stop" and not slot.after_eos  # it wrote a block marker: it wants more to read
            # An EOS that ends only a turn: the chunks still to come may continue the answer.
            read_on = eos and layout.eos_ends_turn_only and self.inp.knobs.read_every_proposal
            # Pacing: while proposals stream, write at most one step ahead of what has been read.
            wait = asked or read_on or (self.inp.knobs.pace and reason == "length")
            waited = await self._next_chunk(props) if wait and props.queue.empty() else []
            pending = waited + self._drain(props)
            if reason == "stop" and not pending:
                break
            if eos and not layout.eos_ends_turn_only:  # text after the EOS would sit outside the answer's turn
                break
            if pending:
                await layout.intake(pending, props.texts, self.answer)

    # ------------------------------------------------------------------ proposers

    def _launch(self, layer: list[AgentSlot], refs: list[str] | None, pacing: Pacing | None = None) -> _Proposals:
        props = _Proposals(len(layer))
        for i, slot in enumerate(layer):
            system = slot.cfg.system_prompt
            if refs is not None:  # a later layer reads the previous one, classic-MoA style
                system = aggregate_system(refs, extra=system)
            msgs = [*([Message("system", system)] if system else []), *self.inp.history,
                    Message("user", self.inp.question)]
            result = self.results.setdefault(slot.cfg.name, ProposalResult())
            self._tasks.append(asyncio.create_task(run_proposer(
                slot, i, msgs, self.inp.question, self.inp.reuse and refs is None, self.inp.knobs, props.queue,
                self._emit, self.t0, result, pacing), name=f"proposer-{slot.cfg.name}"))
        return props

    async def _earlier_layers(self) -> list[str] | None:
        refs: list[str] | None = None
        for layer in self.layers[:-1]:
            props = self._launch(layer, refs)
            while not props.all_done:
                props.take(await props.queue.get())
            props.check_alive()
            refs = [self.results[s.cfg.name].text for s in layer]
        return refs

    def _ingest(self, props: _Proposals, chunk: Chunk) -> None:
        self.pacing.took(chunk.proposer)
        props.texts[chunk.proposer] += chunk.text
        if chunk.text or chunk.final:
            self.chunks_ingested += 1 if chunk.text else 0
            name = self.layers[-1][chunk.proposer].cfg.name
            self._emit(ChunkIngested(name, len(self.layers) - 1, chunk.index, chunk.tokens, self._now(), chunk.final))

    async def _wait_start(self, props: _Proposals) -> list[Chunk]:
        """Collect chunks until the start policy holds; returns the chunks taken so far."""
        knobs = self.inp.knobs
        taken: list[Chunk] = []
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

    async def _wait_all(self, props: _Proposals) -> None:
        """Ingest every chunk until every proposal is over."""
        while not props.all_done:
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                self._ingest(props, chunk)
        props.check_alive()

    async def _next_chunk(self, props: _Proposals) -> list[Chunk]:
        """Wait for the next chunk with text, ingested; [] once every proposal is over."""
        while not props.all_done:
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                self._ingest(props, chunk)
                if chunk.text:
                    return [chunk]
        props.check_alive()
        return []

    def _drain(self, props: _Proposals) -> list[Chunk]:
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

    # ------------------------------------------------------------------ the answer

    def _budget(self) -> int:
        return self.inp.max_tokens or self.agg.cfg.max_tokens

    async def _answer(self, max_tokens: int) -> tuple[int, str | None]:
        """Generate up to max_tokens answer tokens, emitting deltas; returns (tokens, finish reason).

        A marker written by the model ends the step with reason "stop" (in `blocks`: it wants more to read)."""
        slot = self.agg
        assert slot.seq is not None
        produced, reason = 0, None
        delta: TokenDelta
        text_filter = self.layout.filter
        sampling = slot.sampling(max_tokens)
        if self.inp.structured is not None:
            # An answer written over several generations (intakes between them) is one output to its grammar:
            # each generation resumes it after the answer so far (an end-of-turn token only ended a turn).
            eos = slot.engine.eos_token_ids
            sampling = dataclasses.replace(sampling, structured=self.inp.structured,
                                           structured_resume=tuple(t for t in self.answer.ids if t not in eos))
        async with contextlib.aclosing(slot.engine.generate(slot.seq, sampling)) as stream:
            async for delta in stream:
                produced += len(delta.token_ids)
                self.answer.ids.extend(delta.token_ids)
                reason = delta.finish_reason
                text, marker = text_filter.push(delta.text) if delta.text else ("", False)
                self._say(text)
                if marker:
                    reason = "stop"
                    break
        slot.after_eos = bool(self.answer.ids) and self.answer.ids[-1] in slot.engine.eos_token_ids
        self.finish_reason = reason
        return produced, reason

    def _say(self, text: str) -> None:
        if not text:
            return
        if self.ttft is None:
            self.ttft = self._now()
            self._emit(FirstToken(self.ttft))
        self.answer.text += text
        self._emit(AggregatorDelta(text, self._now()))

    # ------------------------------------------------------------------ metrics

    def _metrics(self) -> Metrics:
        agents: dict[str, AgentMetrics] = {}
        totals = [0, 0, 0]
        for layer_idx, layer in enumerate(self.layers):
            if not self.layout.reads_proposals:
                break
            for slot in layer:
                res = self.results.get(slot.cfg.name, ProposalResult())
                st = slot.turn_stats()
                agents[slot.cfg.name] = AgentMetrics(
                    role="proposer", layer=layer_idx, prompt_tokens=slot.prompt_tokens, completion_tokens=res.tokens,
                    prefill_computed=st.prefill_computed, prefill_reused=st.prefill_reused,
                    decode_tokens=st.decode_tokens, context_tokens=slot.context_tokens(),
                    finish_reason=res.finish_reason, error=res.error)
                totals = [totals[0] + st.prefill_computed, totals[1] + st.prefill_reused,
                          totals[2] + st.decode_tokens]
        st = self.agg.turn_stats()
        agents[self.agg.cfg.name] = AgentMetrics(
            role="aggregator", layer=len(self.layers), prompt_tokens=self.agg.prompt_tokens,
            completion_tokens=len(self.answer.ids), finish_reason=self.finish_reason,
            prefill_computed=st.prefill_computed,
            prefill_reused=st.prefill_reused, decode_tokens=st.decode_tokens, context_tokens=self.agg.context_tokens())
        return Metrics(
            mode=self.inp.mode, ttft_s=self.ttft, total_s=self._now(), answer_tokens=len(self.answer.ids),
            chunks_ingested=self.chunks_ingested, aggregator_prefill_computed=st.prefill_computed,
            aggregator_prefill_reused=st.prefill_reused, prefill_computed=totals[0] + st.prefill_computed,
            prefill_reused=totals[1] + st.prefill_reused, decode_tokens=totals[2] + st.decode_tokens,
            agents=agents, proposer_holds=self.pacing.holds, proposer_max_lead_chunks=self.pacing.max_ahead)
