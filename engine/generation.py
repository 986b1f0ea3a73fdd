"""One running generate() and one open()/append() waiting for compute: records both local engines share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from .detokenizer import Detokenizer
from .protocol import SamplingParams, TokenDelta
from .structured_state import StructuredState


@dataclass
class Generation:
    """One running generate(): its sampling, RNG, detokenizer, grammar state and the queue its stream reads."""

    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    structured: StructuredState | None = None  # where the output is in its grammar (structured output only)
    queue: asyncio.Queue[TokenDelta | BaseException | None] = field(default_factory=asyncio.Queue)
    produced: int = 0
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
