"""The llama.cpp engine's scheduler: the shared algorithm (engine/scheduler.py) writing each chunk as batch tokens.

Each chunk's llama_decode tokens (id, position, slot, whether its logits are wanted) are fixed when it is
scheduled: an append during the step must not change which rows the decode returns. A draft's tokens sit right
after its decode, each asking for logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import scheduler
from .context import BatchToken
from .sequence_state import LlamaSeq


@dataclass(frozen=True)
class Chunk(scheduler.ScheduledChunk[LlamaSeq]):
    """Tokens start..start+count-1 of one sequence (slot and cells reserved), as llama_decode takes them."""

    tokens: tuple[BatchToken, ...] = ()  # the chunk's own, then its draft's

    @property
    def n_logits(self) -> int:
        """Logits rows the decode returns for this chunk."""
        return sum(t.logits for t in self.tokens)

    @property
    def ends_sequence(self) -> bool:
        """Whether its last token was the sequence's last when scheduled (its logits row then precedes the draft's)."""
        last = self.tokens[self.count - 1] if self.count else None
        return last is not None and last.logits and last.pos == self.end - 1


Step = scheduler.ScheduledStep[Chunk]


def batch_tokens(s: LlamaSeq, start: int, count: int) -> tuple[BatchToken, ...]:
    """A chunk's tokens for llama_decode; logits only where used (the sequence's end, or a scored range)."""
    assert s.slot is not None
    last = len(s.tokens) - 1
    scored = s.logits_from if s.logits_from is not None else last + 1
    return tuple(BatchToken(s.tokens[p], p, s.slot, p == last or p >= scored) for p in range(start, start + count))


class Scheduler(scheduler.Scheduler[LlamaSeq, Chunk]):
    """Chooses the chunks of the next decode; each chunk carries its batch tokens."""

    def chunk(self, s: LlamaSeq, start: int, count: int) -> Chunk:
        """The chunk with its batch tokens, fixed now."""
        return Chunk(s, start, count, s.generation, tokens=batch_tokens(s, start, count))

    def with_draft(self, c: Chunk, draft: tuple[int, ...]) -> Chunk:
        """The decode chunk with its draft's tokens decoded right after it."""
        assert c.seq.slot is not None
        extra = tuple(BatchToken(t, c.end + i, c.seq.slot, True) for i, t in enumerate(draft))
        return replace(c, tokens=c.tokens + extra, draft=draft)
