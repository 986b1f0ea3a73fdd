"""What the llama.cpp engine knows about one sequence: tokens, its slot and cells, progress, who waits on it.

Generations and waiters are engine/generation.py's records, shared by both local engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..generation import Generation, LocalSequence, Waiter

__all__ = ["Generation", "LlamaSeq", "Waiter"]


@dataclass
class LlamaSeq(LocalSequence):
    """One sequence of the llama.cpp engine (also kept after close, while its KV serves as a prefix cache)."""

    slot: int | None = None  # llama.cpp sequence id while its KV is resident
    cells: list[int] = field(default_factory=list)  # ledger cells of positions 0.. (computed or being computed)
    indexed: int = 0  # full blocks entered in the prefix index
    # Positions from here on hold KV computed before tokens were inserted below them (insert): not what a prefill
    # of these tokens computes, so they are never shared as a cached prefix. None: every position is a prefill's.
    moved_from: int | None = None
    logits_from: int | None = None  # score(): keep the logits of every position from here on
    scored: list[np.ndarray] = field(default_factory=list)

    @property
    def evictable(self) -> bool:
        """Whether its KV may be dropped (resident, nobody using it, not pinned)."""
        return self.slot is not None and self.generation is None and not self.waiters and not self.pinned
