"""Picks each step's work under the token budget: every decode first, then chunks of pending prefill.

Like vLLM v1's scheduler, a step mixes the one-token decodes of all generating sequences with chunks of the
prefills that someone waits for (chunked prefill), so a long prompt never stalls the streams already running.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation import Generation
from ..prompt_lookup import PromptLookup
from ..sequence_table import SequenceTable
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
    """One forward pass worth of chunks, or (with no chunks) a sequence that cannot fit the KV budget at all."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    unfit: SeqState | None = None  # nothing else was scheduled and even evicting every idle sequence was not enough


class Scheduler:
    """Chooses the chunks of the next step from the sequences of one table."""

    def __init__(self, table: SequenceTable[SeqState], kv: KVCacheManager, max_tokens_per_step: int,
                 drafter: PromptLookup | None = None, stop_ids: frozenset[int] = frozenset()) -> None:
        self._table = table
        self._kv = kv
        self.max_tokens_per_step = max_tokens_per_step
        self.drafter = drafter
        self._stop_ids = stop_ids

    def schedule(self) -> ScheduledStep:
        """The next step: decodes first, then waited-for prefills (generations first, then least recently used)."""
        budget = self.max_tokens_per_step
        chunks: list[ScheduledChunk] = []
        chosen: set[int] = set()
        seqs = list(self._table)
        decodes = [s for s in seqs if s.generation is not None and s.pending == 1]
        decode_ids = {d.id for d in decodes}
        prefills = sorted(
            (s for s in seqs if s.wants_compute and s.id not in decode_ids),
            key=lambda s: (s.generation is None, s.last_used),
        )
        for s in [*decodes, *prefills]:
            if budget <= 0:
                break
            if s.num_computed == 0 and not s.blocks:
                self._kv.match_prefix(s)
            count = min(s.pending, budget)
            protect = chosen | {s.id}
            # Judge the whole sequence, not this chunk: a prompt that can never fit fails before any eviction.
            fits = self._kv.can_fit(self._kv.blocks_needed(s, s.pending), protect)
            draft = self._draft(s, budget - count) if s.id in decode_ids and fits else ()
            if draft and not self._kv.can_fit(self._kv.blocks_needed(s, count + len(draft)), protect):
                draft = ()  # a guess never evicts anyone
            blocks = self._kv.allocate(self._kv.blocks_needed(s, count + len(draft)), protect) if fits else None
            if blocks is None:
                if not chunks:
                    return ScheduledStep(unfit=s)
                continue  # others run this step; their blocks come back or they finish, then we retry
            s.blocks.extend(blocks)
            chunks.append(ScheduledChunk(s, s.num_computed, count, s.generation, draft))
            chosen.add(s.id)
            budget -= count + len(draft)
        return ScheduledStep(chunks)

    def _draft(self, s: SeqState, room: int) -> tuple[int, ...]:
        """The prompt-lookup draft of a generating sequence (none without a drafter)."""
        if self.drafter is None or s.generation is None:
            return ()
        return self.drafter.propose(s.tokens, s.generation, room, self._table.max_model_len, self._stop_ids)
