"""What the embedded engine knows about one sequence: tokens, KV blocks, progress, and who waits on it.

The scheduler, the KV-cache manager, the model runner and the engine all read this one record; each writes
only its own fields (the manager the block fields, the engine progress and generation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation import LocalSequence


@dataclass
class SeqState(LocalSequence):
    """One sequence of the embedded engine: its KV blocks and prefix-cache progress."""

    blocks: list[int] = field(default_factory=list)
    registered: int = 0  # full blocks already entered in the prefix cache

    @property
    def evictable(self) -> bool:
        """Whether its KV may be dropped to make room (it holds blocks, nobody is using it, it is not pinned)."""
        return bool(self.blocks) and self.generation is None and not self.waiters and not self.pinned
