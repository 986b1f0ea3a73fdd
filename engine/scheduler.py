"""Picks each step's work under the token budget: every decode first, then chunks of waited-for prefill.

Like vLLM v1's scheduler, a step mixes the one-token decodes of all generating sequences with chunks of the
prefills that someone waits for (chunked prefill), so a long prompt never stalls the streams already running;
work of a lower SamplingParams.priority value goes first. Work short of KV preempts younger work, as vLLM's
scheduler does (engine/preemption.py). With prompt lookup, a greedy decode brings its draft along: the guessed
tokens follow it in the same pass, in what the certain work left of the budget and on KV that was free anyway.

Both local engines run this one algorithm over their own KV bookkeeping (`StepKV`: blocks in the transformers
engine, cells in the llama.cpp engine); a backend's scheduler only says how its chunk is written down.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from .generation import Generation, LocalSequence
from .preemption import Preemption, Room, priority
from .prompt_lookup import PromptLookup
from .sequence_table import SequenceTable
from .step_loop import blamed_on

S = TypeVar("S", bound=LocalSequence)
S_contra = TypeVar("S_contra", bound=LocalSequence, contravariant=True)


class StepKV(Room[S_contra], Protocol[S_contra]):
    """What the scheduler needs from an engine's KV bookkeeping, beyond what preemption needs (`Room`)."""

    def place(self, s: S_contra, count: int, protect: Collection[int]) -> bool:
        """Give the sequence its cached prefix and KV for its next `count` tokens (evicting idle sequences if
        short); False if even that is not enough. The whole of what is pending is judged, not this chunk."""
        ...

    def reserve_spare(self, s: S_contra, count: int, n: int) -> int:
        """Up to n more tokens' KV after the next `count`, from free KV only (a guess costs nobody their KV);
        how many it got."""
        ...


@dataclass(frozen=True)
class ScheduledChunk(Generic[S]):
    """Tokens start..start+count-1 of one sequence, computed in this step (their KV is reserved)."""

    seq: S
    start: int
    count: int
    # The generation a token sampled after this chunk belongs to, fixed when scheduled: if it was cancelled and
    # another started meanwhile, the token (drawn with the old settings) is dropped, never handed to the new one.
    gen: Generation | None = None
    # Guessed next tokens (prompt lookup) computed after the chunk in the same pass; sampling keeps the longest
    # prefix it would have produced itself, the rest is dropped.
    draft: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        """One past the last position computed."""
        return self.start + self.count


C = TypeVar("C", bound=ScheduledChunk)  # type: ignore[type-arg]


@dataclass(frozen=True)
class ScheduledStep(Generic[C]):
    """One forward pass worth of chunks, or a sequence that cannot fit the KV budget at all."""

    chunks: list[C] = field(default_factory=list)
    # A sequence that cannot fit even if every other unpinned sequence gave its KV back: the engine refuses it
    # and asks again (chunks picked before it keep their KV and are picked again).
    unfit: LocalSequence | None = None
    # With no chunks: work waits for pins to end, and must be looked at again by then (time.monotonic()) even
    # if no unpin or close wakes the engine.
    wake_at: float | None = None


class Scheduler(Generic[S, C]):
    """Chooses the chunks of the next step from the sequences of one table.

    `chunk` and `with_draft` write a chunk down; a backend whose pass needs more than the positions (llama.cpp's
    batch tokens) overrides them.
    """

    def __init__(self, table: SequenceTable[S], kv: StepKV[S], max_tokens_per_step: int,
                 drafter: PromptLookup | None = None, stop_ids: frozenset[int] = frozenset(),
                 pin_wait_s: float = 30.0) -> None:
        self._table = table
        self._kv = kv
        self.max_tokens_per_step = max_tokens_per_step
        self.drafter = drafter
        self._stop_ids = stop_ids
        self.preemption: Preemption[S] = Preemption(table, kv, pin_wait_s)

    def chunk(self, s: S, start: int, count: int) -> C:
        """The chunk of `count` tokens of `s` from `start`, for its current generation."""
        return ScheduledChunk(s, start, count, s.generation)  # type: ignore[return-value]

    def with_draft(self, c: C, draft: tuple[int, ...]) -> C:
        """The chunk with draft tokens computed after it (their KV is reserved)."""
        return replace(c, draft=draft)

    def schedule(self) -> ScheduledStep[C]:
        """The next step by priority; within one, decodes, then waited-for prefills (generations first), by arrival.

        Work that lacks KV preempts younger work (see engine/preemption.py), even work already picked for this
        step; work that only older work could make room for waits for it, and the prefills after it wait too (as
        vLLM's waiting queue is first come, first served): KV they took now would only be preempted for it.
        """
        self.preemption.observe()
        arrival = self.preemption.arrival
        budget = self.max_tokens_per_step
        chunks: list[C] = []
        preempted: set[int] = set()
        waiting: list[S] = []
        seqs = list(self._table)
        decode_ids = {s.id for s in seqs if s.generation is not None and s.pending == 1}
        # Priority first, then decodes before prefills (generations' before opens/appends), each in arrival order.
        work = sorted((s for s in seqs if s.wants_compute),
                      key=lambda s: (priority(s), s.id not in decode_ids, s.generation is None, arrival(s)))
        held = False  # a prefill waits for KV: the prefills after it wait behind it
        for s in work:
            if budget <= 0:
                break
            if s.id in preempted or (held and s.id not in decode_ids):
                continue  # it gave its KV to older work in this pass, or waits its turn: the next steps
            with blamed_on(s):  # a fault in one sequence's part fails it alone
                protect = {c.seq.id for c in chunks} | {s.id}
                if not self._kv.place(s, min(s.pending, budget), protect):
                    victims = self.preemption.make_room(s, protect)
                    if victims is None:
                        return ScheduledStep(chunks, unfit=s)
                    preempted.update(v.id for v in victims)
                    chunks = [c for c in chunks if c.seq.id not in preempted]
                    budget = self.max_tokens_per_step - sum(c.count for c in chunks)
                    protect = {c.seq.id for c in chunks} | {s.id}
                    if not victims or not self._kv.place(s, min(s.pending, budget), protect):
                        waiting.append(s)
                        held = held or s.id not in decode_ids
                        continue  # older work holds the KV; it comes back when that work ends, then this retries
                count = min(s.pending, budget)
                chunks.append(self.chunk(s, s.num_computed, count))
                budget -= count
        # Drafts come after the certain work, since they are guesses: they take only what it left of the budget.
        for i, c in enumerate(chunks):
            if budget > 0 and c.seq.id in decode_ids:
                with blamed_on(c.seq):
                    draft = self._draft(c.seq, budget)
                    draft = draft[:self._kv.reserve_spare(c.seq, c.count, len(draft))] if draft else ()
                    if draft:
                        chunks[i] = self.with_draft(c, draft)
                budget -= len(draft)
        if not chunks and waiting:
            wake_at = self.preemption.wake_at(waiting)
            if wake_at is not None:
                return ScheduledStep(wake_at=wake_at)  # an unpin, a close or a pin's end lets it go on
            # The oldest work can preempt all younger work, so this needs KV held by work that may not be
            # preempted (a score's fork) blocking everyone: refuse the oldest rather than spin.
            return ScheduledStep(unfit=min(waiting, key=arrival))
        return ScheduledStep(chunks)

    def _draft(self, s: S, room: int) -> tuple[int, ...]:
        """The prompt-lookup draft of a generating sequence (none without a drafter)."""
        if self.drafter is None or s.generation is None:
            return ()
        return self.drafter.propose(s.tokens, s.generation, room, self._table.max_model_len, self._stop_ids)
