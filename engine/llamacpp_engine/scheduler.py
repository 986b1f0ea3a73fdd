"""Packs each llama_decode: the decode token of every generating sequence, then chunks of waited-for prefill.

Continuous batching as in the embedded engine's scheduler: work goes by priority (SamplingParams.priority), and
within a priority one-token decodes go first so running streams never stall behind a long prompt; prefill chunks
fill the rest of the token budget, and each sequence gets its slot, cached prefix and cells before its chunk is
taken. With prompt lookup, a greedy decode brings its draft along:
the guessed tokens sit right after it in the same batch, each asking for logits, in what the certain work left
of the budget and on cells that were free anyway. Work short of KV preempts younger work, as vLLM's
scheduler does (engine/preemption.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..preemption import Preemption, priority
from ..prompt_lookup import PromptLookup
from ..sequence_table import SequenceTable
from ..step_loop import blamed_on
from .context import BatchToken
from .kv_residency import KVResidency
from .sequence_state import Generation, LlamaSeq


@dataclass(frozen=True)
class Chunk:
    """Tokens start..start+count-1 of one sequence, computed in this step (slot and cells reserved)."""

    seq: LlamaSeq
    start: int
    count: int
    # The generation a token sampled after this chunk belongs to, fixed when scheduled: if it was cancelled and
    # another started meanwhile, the token (drawn with the old settings) is dropped.
    gen: Generation | None = None
    # Fixed when scheduled too: an append during the step must not change which rows the decode returned.
    tokens: tuple[BatchToken, ...] = ()  # the chunk's own, then its draft's
    # Guessed next tokens (prompt lookup) decoded after the chunk at positions end..; sampling keeps the longest
    # prefix it would have produced itself, the KV of the rest is removed.
    draft: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        """One past the last position computed."""
        return self.start + self.count

    @property
    def n_logits(self) -> int:
        """Logits rows the decode returns for this chunk."""
        return sum(t.logits for t in self.tokens)

    @property
    def ends_sequence(self) -> bool:
        """Whether its last token was the sequence's last when scheduled (its logits row then precedes the draft's)."""
        last = self.tokens[self.count - 1] if self.count else None
        return last is not None and last.logits and last.pos == self.end - 1


def batch_tokens(s: LlamaSeq, start: int, count: int) -> tuple[BatchToken, ...]:
    """A chunk's tokens for llama_decode; logits only where used (the sequence's end, or a scored range)."""
    assert s.slot is not None
    last = len(s.tokens) - 1
    scored = s.logits_from if s.logits_from is not None else last + 1
    return tuple(BatchToken(s.tokens[p], p, s.slot, p == last or p >= scored) for p in range(start, start + count))


@dataclass(frozen=True)
class Step:
    """One llama_decode worth of chunks, or a sequence that cannot fit the KV budget at all."""

    chunks: list[Chunk] = field(default_factory=list)
    # A sequence that cannot fit even if every other unpinned sequence gave its KV back: the engine refuses it
    # and asks again (chunks packed before it keep their cells and are packed again).
    unfit: LlamaSeq | None = None


class Scheduler:
    """Chooses the chunks of the next decode from the sequences of one table."""

    def __init__(self, table: SequenceTable[LlamaSeq], kv: KVResidency, max_tokens_per_step: int,
                 drafter: PromptLookup | None = None, stop_ids: frozenset[int] = frozenset()) -> None:
        self._table = table
        self._kv = kv
        self.max_tokens_per_step = max_tokens_per_step
        self.drafter = drafter
        self._stop_ids = stop_ids
        self.preemption: Preemption[LlamaSeq] = Preemption(table, kv)

    def schedule(self) -> Step:
        """The next step by priority; within one, decodes, then waited-for prefills (generations first), by arrival.

        Work that lacks a slot or cells preempts younger work (see engine/preemption.py), even work already
        packed in this step; work that only older work could make room for waits for it.
        """
        self.preemption.observe()
        arrival = self.preemption.arrival
        budget = self.max_tokens_per_step
        chunks: list[Chunk] = []
        preempted: set[int] = set()
        waiting: list[LlamaSeq] = []
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
                protect = {c.seq.id for c in chunks} | {s.id}
                if not self._place(s, min(s.pending, budget), protect):
                    victims = self.preemption.make_room(s, protect)
                    if victims is None:
                        return Step(chunks, unfit=s)
                    preempted.update(v.id for v in victims)
                    chunks = [c for c in chunks if c.seq.id not in preempted]
                    budget = self.max_tokens_per_step - sum(c.count for c in chunks)
                    protect = {c.seq.id for c in chunks} | {s.id}
                    if not victims or not self._place(s, min(s.pending, budget), protect):
                        waiting.append(s)
                        continue  # older work holds the cells; they come back when it ends, then it is retried
                count = min(s.pending, budget)
                chunks.append(Chunk(s, s.num_computed, count, s.generation, batch_tokens(s, s.num_computed, count)))
                budget -= count
        # Drafts come after the certain work, since they are guesses: they take only what it left of the budget,
        # and only cells that are free (a guess never evicts anyone).
        for i, c in enumerate(chunks):
            if budget > 0 and c.seq.id in decode_ids:
                with blamed_on(c.seq):
                    chunks[i] = self._with_draft(c, budget)
                budget -= len(chunks[i].draft)
        if not chunks and waiting:
            # The oldest work can preempt all younger work, so this needs KV held by work that may not be
            # preempted (a score's fork) blocking everyone: refuse the oldest rather than spin.
            return Step(unfit=min(waiting, key=arrival))
        return Step(chunks)

    def _with_draft(self, c: Chunk, room: int) -> Chunk:
        """The decode chunk with its prompt-lookup draft (at most `room` tokens) decoded after it."""
        s = c.seq
        draft = self._draft(s, room)
        draft = draft[:self._kv.reserve_spare(s, len(draft))] if draft else ()
        if not draft:
            return c
        assert s.slot is not None
        extra = tuple(BatchToken(t, c.end + i, s.slot, True) for i, t in enumerate(draft))
        return replace(c, tokens=c.tokens + extra, draft=draft)

    def _draft(self, s: LlamaSeq, room: int) -> tuple[int, ...]:
        """The prompt-lookup draft of a generating sequence (none without a drafter)."""
        if self.drafter is None or s.generation is None:
            return ()
        return self.drafter.propose(s.tokens, s.generation, room, self._table.max_model_len, self._stop_ids)

    def _place(self, s: LlamaSeq, count: int, protect: set[int]) -> bool:
        """Give the sequence a slot, its cached prefix and cells for `count` tokens (evicting idle ones if short)."""
        return self._kv.make_resident(s, protect) and self._kv.reserve(s, min(count, s.pending), protect)
