"""Proposers serve the answer: while the aggregator answers, they write only as far ahead as its next intake reads.

Before the answer starts, proposers run flat out (their first chunks are what the aggregator waits for). Once it
answers, its tokens are what the user waits for: it is served first in every engine step (proposers' generations
then carry PROPOSER_PRIORITY, SamplingParams.priority's "later"), and a proposer that already has `lead_chunks`
chunks written that the aggregator has not taken in leaves its generation at that chunk's end and starts another
once the aggregator has read it. A proposer is then never more than `lead_chunks` chunks ahead of what the
aggregator has read, and the batch the aggregator decodes in holds only the proposers it will need next. A
generation keeps the priority it started with: one begun before the answer keeps 0 until its proposer is held.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

ANSWER_PRIORITY = 0  # SamplingParams.priority's default: the aggregator's generations
PROPOSER_PRIORITY = 1  # served after the aggregator while it answers


@dataclass
class Pacing:
    """The throttle of one turn's last proposer layer; the counters are what the tests read (no clocks)."""

    n: int
    lead_chunks: int | None  # None: proposers are never held
    answering: bool = False
    written: list[int] = field(default_factory=list)  # chunks each proposer has written
    taken: list[int] = field(default_factory=list)  # chunks of each proposer the aggregator has taken in
    holds: int = 0  # times a proposer waited for the aggregator to read
    # Most chunks a proposer had written beyond the aggregator's intake, counted on writing a chunk it began while
    # the aggregator answered (one begun before that could not be held).
    max_ahead: int = 0
    _began_answering: list[bool] = field(default_factory=list)  # the chunk each proposer writes began in the answer
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.written = [0] * self.n
        self.taken = [0] * self.n
        self._began_answering = [False] * self.n

    def priority(self) -> int:
        """The priority of a proposer's next generation: after the aggregator's once it answers."""
        return PROPOSER_PRIORITY if self.answering else ANSWER_PRIORITY

    def ahead(self, proposer: int) -> int:
        """Chunks the proposer has written that the aggregator has not taken in."""
        return self.written[proposer] - self.taken[proposer]

    def must_wait(self, proposer: int) -> bool:
        """Whether the proposer is too far ahead to write another chunk now (only while the aggregator answers)."""
        return self.lead_chunks is not None and self.answering and self.ahead(proposer) >= self.lead_chunks

    async def before_chunk(self, proposer: int) -> None:
        """Return once the proposer may write its next chunk (at once, unless the aggregator answers)."""
        held = False
        while self.must_wait(proposer):
            held = True
            self._changed.clear()
            await self._changed.wait()
        self.holds += held
        self._began_answering[proposer] = self.answering

    def wrote(self, proposer: int) -> None:
        """The proposer put a chunk on the queue."""
        self.written[proposer] += 1
        if self._began_answering[proposer]:
            self.max_ahead = max(self.max_ahead, self.ahead(proposer))
        self._began_answering[proposer] = self.answering  # the next chunk begins now

    def took(self, proposer: int) -> None:
        """The aggregator took in one chunk of the proposer."""
        self.taken[proposer] += 1
        self._changed.set()

    def start_answer(self) -> None:
        """The aggregator starts answering: from now on proposers come second."""
        self.answering = True
        self._changed.set()
