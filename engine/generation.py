"""Records both local engines share: a running generate(), an open()/append() waiting, a local sequence."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .detokenizer import Detokenizer
from .protocol import SamplingParams, TokenDelta
from .sequence_table import SequenceEntry
from .structured_state import StructuredState
from .token_history import TokenHistory


@dataclass
class Generation:
    """One running generate(): its sampling, RNG, detokenizer, grammar state and the queue its stream reads."""

    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    structured: StructuredState | None = None  # where the output is in its grammar (structured output only)
    queue: asyncio.Queue[TokenDelta | BaseException | None] = field(default_factory=asyncio.Queue)
    produced: int = 0
    history: TokenHistory | None = None  # what the penalties read, built on the first sample (penalized only)
    # With a response cache: the context it started from and what it sent, stored once it finishes.
    context: tuple[int, ...] | None = None
    sent: list[TokenDelta] | None = None

    def put(self, delta: TokenDelta) -> None:
        """Hand a delta to the stream (and keep it when the response is to be cached)."""
        self.queue.put_nowait(delta)
        if self.sent is not None:
            self.sent.append(delta)


@dataclass
class Waiter:
    """An open() or append() waiting until its tokens are computed."""

    target: int  # resolved once num_computed reaches this
    rollback_to: int  # on CapacityError, tokens beyond this are dropped again
    future: asyncio.Future[None]


@dataclass
class LocalSequence(SequenceEntry):
    """A sequence whose KV an embedded engine holds: progress, its generation, who waits, its pin."""

    cache_salt: str | None = None  # only sequences with the same salt share cached KV
    hashes: list[bytes] = field(default_factory=list)  # chain keys of the full blocks known so far
    num_computed: int = 0
    last_logits: Any = None  # logits after the last computed token (the engine's array type), if kept
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
        """Whether someone waits for its pending tokens (an open/append/score, or a generation)."""
        return self.pending > 0 and (bool(self.waiters) or self.generation is not None)

    @property
    def pinned(self) -> bool:
        """Whether a pin (an agent waiting on a tool, say) still holds its KV in place."""
        return self.pinned_until is not None and time.monotonic() < self.pinned_until
