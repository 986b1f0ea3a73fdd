"""One MoA turn: proposers stream chunks, readers take them in through their layouts, the answer is sampled.

The driver is the same for every mode: it launches layer 0's proposers, then one reader per proposer of each later
layer (moa_stream/moa/reader.py: it reads the layer before it as that layer streams, through its own layout) and
the aggregator, a reader of the last layer whose text is the answer. What each reader's context holds is its
layout's business (moa_stream/moa/layouts/): `mode` picks the aggregator's, `layer_modes` those of the later
proposer layers (each defaults to `mode`; `classic` there waits for the whole layer before it, as MoA papers run it).
"""

from __future__ import annotations

import asyncio
import time

from ..agent.context import Message
from ..agent.slot import AgentSlot, Emit, ProposalResult, ProposerRun
from ..events import AgentMetrics, Done, Metrics
from .layouts import AggregatorLayout, IncrementalLayout, layout_for
from .pacing import Pacing
from .proposer import run_proposer
from .reader import AnswerSink, Fanout, Proposals, ProposalSink, Reader
from .turn_input import TurnInput


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
        self.results: dict[str, ProposalResult] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The last layer's throttle while the answer is written (incremental layouts; see moa_stream/moa/pacing.py).
        # Only proposers run by run_proposer can be held; those of later layers write as they read.
        paced = isinstance(self.layout, IncrementalLayout) and len(proposer_layers) == 1
        lead = inp.knobs.proposer_lead_chunks if paced else None
        self.pacing = Pacing(len(proposer_layers[-1]), lead)
        self.sink = AnswerSink(emit, self._now)
        self.prime_gate = asyncio.Lock()  # the turn's readers prime one at a time (see Reader)
        self.reader = Reader(self.layout, None, inp.knobs, inp.max_tokens or aggregator.cfg.max_tokens, self.sink,
                             emit, self.t0, self.pacing, inp.structured, self.prime_gate)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def ttft(self) -> float | None:
        """Seconds to the answer's first token (None before it)."""
        return self.sink.ttft

    @property
    def chunks_ingested(self) -> int:
        """Chunks of the last layer the aggregator took in."""
        return self.reader.chunks_ingested

    # ------------------------------------------------------------------ driver

    async def run(self) -> Done:
        """Run the turn to its Done event (also emitted)."""
        try:
            await self._to_answer_start()
            if self._answers_first and await self.reader.write_opening():
                self._launch_layers()
            await self.reader.write()
        finally:
            await self._stop_tasks()
        done = Done(self.sink.text, self._metrics())
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

    async def _to_answer_start(self) -> None:
        """Proposers launched, every layer read as its layout wants, the answer's prompt in place."""
        for slot in [*(s for layer in self.layers for s in layer), self.agg]:
            slot.begin_turn()
            slot.cache_salt = self.inp.cache_salt
        if self.layout.reads_proposals:
            self.reader.props = Proposals([s.cfg.name for s in self.layers[-1]], len(self.layers) - 1)
            if not self._answers_first:
                self._launch_layers()
        await self.reader.to_start()

    @property
    def _answers_first(self) -> bool:
        """start_policy at_once on an incremental layout: the answer's first token before any proposer starts.

        Started together, the proposers' prompts would share the answer's first passes and delay its first token
        by what they cost (on a CPU a pass costs what its tokens cost)."""
        return (self.inp.knobs.start_policy == "at_once" and self.layout.reads_proposals
                and isinstance(self.layout, IncrementalLayout))

    async def _stop_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ proposers

    def _launch_layers(self) -> None:
        """Start every proposer layer; the last one writes to the aggregator's view (self.reader.props)."""
        views = self._views(0)
        self._launch(self.layers[0], Fanout(views), self.pacing)
        for depth in range(1, len(self.layers)):
            upstream, views = views, self._views(depth)
            out = Fanout(views)
            for i, slot in enumerate(self.layers[depth]):
                self._launch_reader(slot, i, upstream[i], out, depth)

    def _views(self, depth: int) -> list[Proposals]:
        """One view of layer `depth` per reader: each proposer of the next layer, or else the aggregator's."""
        if depth + 1 == len(self.layers):
            assert self.reader.props is not None
            return [self.reader.props]
        return [Proposals([s.cfg.name for s in self.layers[depth]], depth) for _ in self.layers[depth + 1]]

    def _launch_reader(self, slot: AgentSlot, idx: int, upstream: Proposals, out: Fanout, depth: int) -> None:
        """Start a later-layer proposer: a reader of `upstream` whose text goes out as chunks to its own readers."""
        modes = self.inp.layer_modes
        mode = modes[depth - 1] if depth - 1 < len(modes) else self.inp.mode
        layout = layout_for(mode, slot.engine)(slot, self.inp)
        sink = ProposalSink(self._run(slot, idx, out))
        reader = Reader(layout, upstream, self.inp.knobs, slot.cfg.max_tokens, sink, self._emit, self.t0,
                        prime_gate=self.prime_gate)
        self._tasks.append(asyncio.create_task(_read_and_write(reader, sink),
                                               name=f"proposer-{slot.cfg.name}"))

    def _launch(self, layer: list[AgentSlot], out: Fanout, pacing: Pacing | None) -> None:
        for i, slot in enumerate(layer):
            self._tasks.append(asyncio.create_task(run_proposer(self._run(slot, i, out), pacing),
                                                   name=f"proposer-{slot.cfg.name}"))

    def _run(self, slot: AgentSlot, idx: int, out: Fanout) -> ProposerRun:
        """A proposer's part in this turn: the agent's own prompt on the question, its text going to `out`."""
        system = slot.cfg.system_prompt
        msgs = [*([Message("system", system)] if system else []), *self.inp.history, Message("user", self.inp.question)]
        result = self.results.setdefault(slot.cfg.name, ProposalResult())
        return ProposerRun(slot, idx, msgs, self.inp.question, self.inp.reuse, self.inp.knobs, out, self._emit,
                           self.t0, result)

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
            completion_tokens=len(self.reader.answer.ids), finish_reason=self.reader.finish_reason,
            prefill_computed=st.prefill_computed,
            prefill_reused=st.prefill_reused, decode_tokens=st.decode_tokens, context_tokens=self.agg.context_tokens())
        return Metrics(
            mode=self.inp.label or self.inp.mode, ttft_s=self.ttft, total_s=self._now(),
            answer_tokens=len(self.reader.answer.ids),
            chunks_ingested=self.chunks_ingested, aggregator_prefill_computed=st.prefill_computed,
            aggregator_prefill_reused=st.prefill_reused, prefill_computed=totals[0] + st.prefill_computed,
            prefill_reused=totals[1] + st.prefill_reused, decode_tokens=totals[2] + st.decode_tokens,
            agents=agents, proposer_holds=self.pacing.holds, proposer_max_lead_chunks=self.pacing.max_ahead)


async def _read_and_write(reader: Reader, sink: ProposalSink) -> None:
    """A later-layer proposer's whole run; never raises (a failure is an event and a Failure for its readers)."""
    try:
        await reader.to_start()
        await reader.write()
    except Exception as exc:
        sink.writer.failed(exc)
        await reader.slot.reset()  # its context holds a broken turn; the next turn starts it afresh
