"""Picks each step's work under the token budget: every decode first, then chunks of pending prefill.

Like vLLM v1's scheduler, a step mixes the one-token decodes of all generating sequences with chunks of the
prefills that someone waits for (chunked prefill), so a long prompt never stalls the streams already running;
work of a lower SamplingParams.priority value goes first.
Work short of KV preempts younger work, as vLLM's scheduler does (engine/preemption.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation import Generation
from ..preemption import Preemption, priority
from ..prompt_lookup import PromptLookup
from ..sequence_table import SequenceTable
from ..step_loop import blamed_on
from .kv_cache_manager import KVCacheManager
from .sequence_state import SeqState


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens start..end-1 of one sequence, computed in this step (their blocks are allocated)."""

    seq: SeqState
    start: int
    count: int
    # The generation a token sampled after this chunk belongs to, fixed when scheduled: if it was cancelled and
    # another started meanwhile, the token (drawn with the old settings) is dropped, never handed to the new one.
    gen: Generation | None = None
    # Guessed next tokens (prompt lookup) computed after the chunk in the same pass; sampling keeps the
    # longest prefix it would have produced itself, the rest is dropped.
    draft: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        """One past the last position computed."""
        return self.start + self.count


@dataclass(frozen=True)
class ScheduledStep:
    """One forward pass worth of chunks, or a sequence that cannot fit the KV budget at all."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    # A sequence that cannot fit even if every other unpinned sequence gave its KV back: the engine refuses it
    # and asks again (chunks picked before it keep their blocks and are picked again).
    unfit: SeqState | None = None


class Scheduler:
    """Chooses the chunks of the next step from the sequences of one table."""

    def __init__(self, table: SequenceTable[SeqState], kv: KVCacheManager, max_tokens_per_step: int,
                 drafter: PromptLookup | None = None, stop_ids: frozenset[int] = frozenset()) -> None:
        self._table = table
        self._kv = kv
        self.max_tokens_per_step = max_tokens_per_step
        self.drafter = drafter
        self._stop_ids = stop_ids
        self.preemption: Preemption[SeqState] = Preemption(table, kv)

    def schedule(self) -> ScheduledStep:
        """The next step by priority; within one, decodes, then waited-for prefills (generations first), by arrival.

        Work that lacks KV preempts younger work (see engine/preemption.py), even work already picked for this
        step; work that only older work could make room for waits for it.
        """
        self.preemption.observe()
        arrival = self.preemption.arrival
        budget = self.max_tokens_per_step
        chunks: list[ScheduledChunk] = []
        preempted: set[int] = set()
        waiting: list[SeqState] = []
        seqs = list(self._table)
        decode_ids = {s.id for s in seqs if s.generation is not None and s.pending == 1}
        # Priority first, then decodes before prefills (generations' before opens/appends), each in arrival order.
        work = sorted((s for s in seqs if s.wants_compute),
                      key=lambda s: (priority(s), s.id not in decode_ids, s.generation is None, arrival(s)))
        for s in work:
            if budget <= 0:
                break
            if s.id in preempted:
                continue  # it gave its KV to older work in this pass: it waits for the next steps
            with blamed_on(s):  # a fault in one sequence's part fails it alone
                if s.num_computed == 0 and not s.blocks:
                    self._kv.match_prefix(s)
                protect = {c.seq.id for c in chunks} | {s.id}
                # Judge the whole sequence, not this chunk: a prompt that can never fit fails before any eviction.
                fits = self._kv.can_fit(self._kv.blocks_needed(s, s.pending), protect)
                if not fits:
                    victims = self.preemption.make_room(s, protect)
                    if victims is None:
                        return ScheduledStep(chunks, unfit=s)
                    if not victims:
                        waiting.append(s)
                        continue  # older work holds the KV; its blocks come back when it ends, then we retry
                    preempted.update(v.id for v in victims)
                    chunks = [c for c in chunks if c.seq.id not in preempted]
                    budget = self.max_tokens_per_step - sum(c.count + len(c.draft) for c in chunks)
                    protect = {c.seq.id for c in chunks} | {s.id}
                count = min(s.pending, budget)
                draft = self._draft(s, budget - count) if s.id in decode_ids else ()
                if draft and not self._kv.can_fit(self._kv.blocks_needed(s, count + len(draft)), protect):
                    draft = ()  # a guess never evicts anyone
                blocks = self._kv.allocate(self._kv.blocks_needed(s, count + len(draft)), protect)
                if blocks is None:  # pragma: no cover - the whole of what is pending was judged to fit
                    waiting.append(s)
                    continue
                s.blocks.extend(blocks)
                chunks.append(ScheduledChunk(s, s.num_computed, count, s.generation, draft))
                budget -= count + len(draft)
        if not chunks and waiting:
            # The oldest work can preempt all younger work, so this needs KV held by work that may not be
            # preempted (a score's fork) blocking everyone: refuse the oldest rather than spin.
            return ScheduledStep(unfit=min(waiting, key=arrival))
        return ScheduledStep(chunks)

    def _draft(self, s: SeqState, room: int) -> tuple[int, ...]:
        """The prompt-lookup draft of a generating sequence (none without a drafter)."""
        if self.drafter is None or s.generation is None:
            return ()
        return self.drafter.propose(s.tokens, s.generation, room, self._table.max_model_len, self._stop_ids)
