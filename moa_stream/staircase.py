"""One MoA turn in any mode: proposers stream chunks, the aggregator takes them in as its layout allows.

- `single`: the aggregator answers alone.
- `classic`: wait for every proposal, then aggregate (MoA's aggregate-and-synthesize prompt).
- `staircase-reprefill`: the paper's layout; at each intake the references are rewritten into the prompt and
  the partial answer is continued from a freshly prefilled sequence.
- `staircase`: append-only; later chunks arrive as blocks after the aggregator's own partial answer.
Earlier proposer layers (L > 1) always run to completion first: layer l+1 reads layer l as in classic MoA.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from engine import TokenDelta

from . import context
from .agents import AgentSlot, Chunk, Emit, Failure, ProposalResult, run_proposer
from .config import StaircaseConfig
from .context import Message
from .errors import MoAError
from .events import AgentMetrics, AggregatorDelta, ChunkIngested, Done, FirstToken, Metrics, Mode


@dataclass
class TurnInput:
    """What a turn answers and how."""

    question: str
    history: list[Message]
    mode: Mode
    knobs: StaircaseConfig
    max_tokens: int | None = None
    reuse: bool = False  # a conversation: agents' live sequences may be extended instead of re-opened


@dataclass
class _Proposals:
    """The proposers of the last layer as the aggregator sees them."""

    n: int
    queue: asyncio.Queue[Chunk | Failure] = field(default_factory=asyncio.Queue)
    texts: list[str] = field(default_factory=list)  # ingested text per proposer
    ready: set[int] = field(default_factory=set)  # has a first chunk (or finished)
    done: set[int] = field(default_factory=set)  # finished or failed
    failed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.texts = [""] * self.n

    @property
    def all_done(self) -> bool:
        return len(self.done) == self.n

    def take(self, item: Chunk | Failure) -> Chunk | None:
        if isinstance(item, Failure):
            self.failed.add(item.proposer)
            self.done.add(item.proposer)
            return None
        self.ready.add(item.proposer)
        if item.final:
            self.done.add(item.proposer)
        return item

    def check_alive(self) -> None:
        if len(self.failed) == self.n:
            raise MoAError(f"all {self.n} proposers failed; see the agent_error events for why")


class Turn:
    """Runs one turn and emits its events; the caller owns the agent slots and their lifetime."""

    def __init__(self, proposer_layers: list[list[AgentSlot]], aggregator: AgentSlot, inp: TurnInput,
                 emit: Emit) -> None:
        self.layers = proposer_layers
        self.agg = aggregator
        self.inp = inp
        self._emit = emit
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.answer = ""
        self.finish_reason: str | None = None
        # Only the staircase layout has blocks the model could imitate; elsewhere the filter passes text through.
        self._filter = context.MarkerFilter(context.block_markers() if inp.mode == "staircase" else ())
        self.answer_ids: list[int] = []
        self.chunks_ingested = 0
        self.results: dict[str, ProposalResult] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ driver

    async def run(self) -> Done:
        """Run the turn to its Done event (also emitted)."""
        for slot in [*(s for layer in self.layers for s in layer), self.agg]:
            slot.begin_turn()
        try:
            if self.inp.mode == "single":
                await self._single()
            else:
                refs = await self._earlier_layers()
                props = self._start_last_layer(refs)
                if self.inp.mode == "classic":
                    await self._classic(props)
                else:
                    await self._staircase(props, append_only=self.inp.mode == "staircase")
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._say(self._filter.flush())
        done = Done(self.answer, self._metrics())
        self._emit(done)
        return done

    # ------------------------------------------------------------------ proposers

    def _launch(self, layer: list[AgentSlot], refs: list[str] | None) -> _Proposals:
        props = _Proposals(len(layer))
        for i, slot in enumerate(layer):
            system = slot.cfg.system_prompt
            if refs is not None:  # a later layer reads the previous one, classic-MoA style
                system = context.aggregate_system(refs, extra=system)
            msgs = [*([Message("system", system)] if system else []), *self.inp.history,
                    Message("user", self.inp.question)]
            result = self.results.setdefault(slot.cfg.name, ProposalResult())
            self._tasks.append(asyncio.create_task(run_proposer(
                slot, i, msgs, self.inp.question, self.inp.reuse and refs is None, self.inp.knobs, props.queue,
                self._emit, self.t0, result), name=f"proposer-{slot.cfg.name}"))
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

    def _start_last_layer(self, refs: list[str] | None) -> _Proposals:
        return self._launch(self.layers[-1], refs)

    def _ingest(self, props: _Proposals, chunk: Chunk) -> None:
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

    # ------------------------------------------------------------------ aggregator layouts

    async def _single(self) -> None:
        slot = self.agg
        system = slot.cfg.system_prompt
        msgs = [*([Message("system", system)] if system else []), *self.inp.history,
                Message("user", self.inp.question)]
        reuse = self.inp.reuse and slot.layout == "single"
        await slot.start(msgs, self.inp.question, reuse)
        slot.layout = "single"
        await self._answer(self._budget())

    async def _classic(self, props: _Proposals) -> None:
        while not props.all_done:
            chunk = props.take(await props.queue.get())
            if chunk is not None:
                self._ingest(props, chunk)
        props.check_alive()
        await self.agg.open_fresh(self._aggregate_prompt(props.texts))
        await self._answer(self._budget())

    async def _staircase(self, props: _Proposals, append_only: bool) -> None:
        slot = self.agg
        head: asyncio.Task[list[int]] | None = None
        if append_only:
            # Prefill everything before the references while the proposers write their first chunks.
            marker = "\u2063REFS\u2063"
            user = context.staircase_user(self.inp.question, marker)
            system = slot.cfg.system_prompt or context.prompts.template("staircase_system")
            msgs = [Message("system", system), *self.inp.history, Message("user", user)]
            head = asyncio.create_task(slot.start(msgs, user, self.inp.reuse and slot.layout == "staircase", marker))
            self._tasks.append(head)  # type: ignore[arg-type]
        first = await self._wait_start(props)
        for chunk in first:
            self._ingest(props, chunk)
        if head is not None:
            tail = await head
            assert slot.seq is not None
            await slot.engine.append(slot.seq, slot.fmt.encode_text(context.staircase_references(props.texts)) + tail)
            slot.layout = "staircase"
        else:
            await slot.open_fresh(self._aggregate_prompt(props.texts))
        budget = self._budget()
        while budget > 0:
            step = budget if props.all_done else min(budget, self.inp.knobs.aggregator_tokens_per_intake)
            produced, reason = await self._answer(step)
            budget -= produced
            asked = reason == "stop" and not slot.after_eos  # it wrote a block marker: it wants more to read
            # Pacing: while proposals stream, write at most one step ahead of what has been read.
            wait = asked or (self.inp.knobs.pace and reason == "length")
            waited = await self._next_chunk(props) if wait and props.queue.empty() else []
            pending = waited + self._drain(props)
            # EOS ends the answer even with chunks left: text after it would sit outside the answer turn.
            if reason == "stop" and (slot.after_eos or not pending):
                break
            if not pending:
                continue
            if append_only:
                text = "".join(context.staircase_more(c.proposer, c.text) for c in pending)
                # Echo the answer's last words after the blocks, so the model resumes its sentence instead of
                # imitating the block pattern (costs a few tokens per intake, still O(Δ)).
                text += context.resume_cue(self.answer) if self.inp.knobs.resume_cue else ""
                self._filter.at_intake()
                assert slot.seq is not None
                await slot.engine.append(slot.seq, slot.fmt.encode_text(text))
            else:
                await slot.open_fresh(self._aggregate_prompt(props.texts) + self.answer_ids)

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

    def _aggregate_prompt(self, texts: list[str]) -> list[int]:
        system = context.aggregate_system(texts, extra=self.agg.cfg.system_prompt)
        msgs = [Message("system", system), *self.inp.history, Message("user", self.inp.question)]
        return self.agg.fmt.prompt(msgs)

    def _budget(self) -> int:
        return self.inp.max_tokens or self.agg.cfg.max_tokens

    async def _answer(self, max_tokens: int) -> tuple[int, str | None]:
        """Generate up to max_tokens answer tokens, emitting deltas; returns (tokens, finish reason).

        A block marker written by the model ends the step with reason "stop" (it wants more to read)."""
        slot = self.agg
        assert slot.seq is not None
        produced, reason = 0, None
        delta: TokenDelta
        # In the append-only layout the model would imitate our blocks: it may not write '[' there at all.
        banned = slot.fmt.bracket_tokens if self.inp.mode == "staircase" else ()
        async with contextlib.aclosing(slot.engine.generate(slot.seq, slot.sampling(max_tokens, banned))) as stream:
            async for delta in stream:
                produced += len(delta.token_ids)
                self.answer_ids.extend(delta.token_ids)
                reason = delta.finish_reason
                text, marker = self._filter.push(delta.text) if delta.text else ("", False)
                self._say(text)
                if marker:
                    reason = "stop"
                    break
        slot.after_eos = bool(self.answer_ids) and self.answer_ids[-1] in slot.engine.eos_token_ids
        self.finish_reason = reason
        return produced, reason

    def _say(self, text: str) -> None:
        if not text:
            return
        if self.ttft is None:
            self.ttft = self._now()
            self._emit(FirstToken(self.ttft))
        self.answer += text
        self._emit(AggregatorDelta(text, self._now()))

    # ------------------------------------------------------------------ metrics

    def _metrics(self) -> Metrics:
        agents: dict[str, AgentMetrics] = {}
        totals = [0, 0, 0]
        for layer_idx, layer in enumerate(self.layers):
            if self.inp.mode == "single":
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
            completion_tokens=len(self.answer_ids), finish_reason=self.finish_reason,
            prefill_computed=st.prefill_computed,
            prefill_reused=st.prefill_reused, decode_tokens=st.decode_tokens, context_tokens=self.agg.context_tokens())
        return Metrics(
            mode=self.inp.mode, ttft_s=self.ttft, total_s=self._now(), answer_tokens=len(self.answer_ids),
            chunks_ingested=self.chunks_ingested, aggregator_prefill_computed=st.prefill_computed,
            aggregator_prefill_reused=st.prefill_reused, prefill_computed=totals[0] + st.prefill_computed,
            prefill_reused=totals[1] + st.prefill_reused, decode_tokens=totals[2] + st.decode_tokens,
            agents=agents)
