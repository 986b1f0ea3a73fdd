"""Packs each llama_decode: the decode token of every generating sequence, then chunks of waited-for prefill.

Continuous batching as in the embedded engine's scheduler: one-token decodes go first so running streams never
stall behind a long prompt, prefill chunks fill the rest of the token budget, and each sequence gets its slot,
cached prefix and cells before its chunk is taken. With prompt lookup, a greedy decode brings its draft along:
the guessed tokens sit right after it in the same batch, each asking for logits, in what the certain work left
of the budget and on cells that were free anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..prompt_lookup import PromptLookup
from ..sequence_table import SequenceTable
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
    """One llama_decode worth of chunks, or (no chunks) a sequence that cannot fit the KV budget at all."""

    chunks: list[Chunk] = field(default_factory=list)
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

    def schedule(self) -> Step:
        """The next step: decodes first, then waited-for prefills (generations first, then least recently used)."""
        budget = self.max_tokens_per_step
        chunks: list[Chunk] = []
        chosen: set[int] = set()
        seqs = list(self._table)
        decodes = [s for s in seqs if s.generation is not None and s.pending == 1]
        decode_ids = {d.id for d in decodes}
        prefills = sorted((s for s in seqs if s.wants_compute and s.id not in decode_ids),
                          key=lambda s: (s.generation is None, s.last_used))
        for s in [*decodes, *prefills]:
            if budget <= 0:
                break
            protect = chosen | {s.id}
            ok = self._kv.make_resident(s, protect)
            count = min(s.pending, budget)
            ok = ok and self._kv.reserve(s, count, protect)
            if not ok:
                if not chunks:
                    return Step(unfit=s)
                continue  # others run this step; their cells come back or they finish, then it is retried
            chunks.append(Chunk(s, s.num_computed, count, s.generation, batch_tokens(s, s.num_computed, count)))
            chosen.add(s.id)
            budget -= count
        # Drafts come after the certain work, since they are guesses: they take only what it left of the budget,
        # and only cells that are free (a guess never evicts anyone).
        for i, c in enumerate(chunks):
            if budget > 0 and c.seq.id in decode_ids:
                chunks[i] = self._with_draft(c, budget)
                budget -= len(chunks[i].draft)
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
