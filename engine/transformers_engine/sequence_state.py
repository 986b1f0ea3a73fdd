"""What the embedded engine knows about one sequence: tokens, KV blocks, progress, and who waits on it.

The scheduler, the KV-cache manager, the model runner and the engine all read this one record; each writes
only its own fields (the manager the block fields, the engine progress and generation).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import torch

from ..detokenizer import Detokenizer
from ..protocol import SamplingParams, TokenDelta
from ..sequence_table import SequenceEntry
from ..structured_state import StructuredState


@dataclass
class Generation:
    """One running generate(): its sampling, RNG, detokenizer, grammar state and the queue its stream reads."""

    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    structured: StructuredState | None = None  # where the output is in its grammar (structured output only)
    queue: asyncio.Queue[TokenDelta | BaseException | None] = field(default_factory=asyncio.Queue)
    produced: int = 0


@dataclass
class Waiter:
    """An open() or append() waiting until its tokens are computed."""

    target: int  # resolved once num_computed reaches this
    rollback_to: int  # on CapacityError, tokens beyond this are dropped again
    future: asyncio.Future[None]


@dataclass
class SeqState(SequenceEntry):
    """One sequence of the embedded engine."""

    blocks: list[int] = field(default_factory=list)
    cache_salt: str | None = None  # mixed into its prefix-cache keys: only sequences with the same salt share KV
    hashes: list[bytes] = field(default_factory=list)  # chain keys of the full blocks known so far
    registered: int = 0  # full blocks already entered in the prefix cache
    num_computed: int = 0
    last_logits: torch.Tensor | None = None
    sampled_pos: int | None = None  # position of a sampled token whose KV is not computed yet
    generation: Generation | None = None
    waiters: list[Waiter] = field(default_factory=list)
    last_used: int = 0
    recompute_until: int = 0  # tokens below this were computed before an eviction
    pinned_until: float | None = None  # time.monotonic() deadline of a pin (inf: until unpinned)

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
        """Whether someone waits for its pending tokens (an open/append, or a generation)."""
        return self.pending > 0 and (bool(self.waiters) or self.generation is not None)

    @property
    def pinned(self) -> bool:
        """Whether a pin (an agent waiting on a tool, say) still holds its KV in place."""
        return self.pinned_until is not None and time.monotonic() < self.pinned_until

    @property
    def evictable(self) -> bool:
        """Whether its KV may be dropped to make room (it holds blocks, nobody is using it, it is not pinned)."""
        return bool(self.blocks) and self.generation is None and not self.waiters and not self.pinned
