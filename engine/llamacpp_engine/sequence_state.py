"""What the llama.cpp engine knows about one sequence: tokens, its slot and cells, progress, who waits on it.

Generations and waiters are engine/generation.py's records, shared by both local engines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..generation import Generation, Waiter
from ..sequence_table import SequenceEntry

__all__ = ["Generation", "LlamaSeq", "Waiter"]


@dataclass
class LlamaSeq(SequenceEntry):
    """One sequence of the llama.cpp engine (also kept after close, while its KV serves as a prefix cache)."""

    cache_salt: str | None = None  # only sequences with the same salt share KV through the prefix index
    slot: int | None = None  # llama.cpp sequence id while its KV is resident
    cells: list[int] = field(default_factory=list)  # ledger cells of positions 0.. (computed or being computed)
    num_computed: int = 0
    hashes: list[bytes] = field(default_factory=list)  # chain keys of its full blocks of tokens
    indexed: int = 0  # full blocks entered in the prefix index
    last_logits: np.ndarray | None = None
    sampled_pos: int | None = None  # position of a sampled token whose KV is not computed yet
    generation: Generation | None = None
    waiters: list[Waiter] = field(default_factory=list)
    last_used: int = 0
    recompute_until: int = 0  # tokens below this were computed before an eviction
    pinned_until: float | None = None  # time.monotonic() deadline of a pin (inf: until unpinned)
    logits_from: int | None = None  # score(): keep the logits of every position from here on
    scored: list[np.ndarray] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether a generation is running on it."""
        return self.generation is not None

    @property
    def pending(self) -> int:
        """Tokens whose KV is not computed yet."""
        return len(self.tokens) - self.num_computed

    @property
    def wants_compute(self) -> bool:
        """Whether someone waits for its pending tokens (an open/append/score, or a generation)."""
        return self.pending > 0 and (bool(self.waiters) or self.generation is not None)

    @property
    def pinned(self) -> bool:
        """Whether a pin (an agent waiting on a tool, say) still holds its KV in place."""
        return self.pinned_until is not None and time.monotonic() < self.pinned_until

    @property
    def evictable(self) -> bool:
        """Whether its KV may be dropped (resident, nobody using it, not pinned)."""
        return self.slot is not None and self.generation is None and not self.waiters and not self.pinned
