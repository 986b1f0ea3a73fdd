"""Recompute preemption, as vLLM's scheduler does it: work that cannot get KV takes it from younger work.

Work is a generation or an open/append/score waiting for its tokens; it arrives when it is first scheduled
and keeps that place until it ends, even when preempted. When work cannot get KV even with every idle sequence
evicted, the most recently arrived work holding KV gives it back (its tokens stay; it is recomputed from them,
as an evicted idle sequence is) until the older work fits. Work that no younger work can make room for waits
for older work to end; since the oldest work always can take what it needs, nothing starves. Pinned sequences
are never preempted: work that only their KV keeps out waits for them (an unpin, a close or the pin's TTL), as
a vLLM request waits for blocks, for at most `pin_wait_s`; only work that still would not fit then, or would
not fit even with every other sequence gone, is refused. Priority (SamplingParams.priority) orders each step's
work, never preemption: ranked by arrival alone, the oldest work always gets its KV, so low-priority work waits
but is never starved. Both local engines' schedulers use this one policy over their own KV bookkeeping (`Room`).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from .generation import LocalSequence

log = logging.getLogger(__name__)

S = TypeVar("S", bound=LocalSequence)
S_contra = TypeVar("S_contra", bound=LocalSequence, contravariant=True)


class Room(Protocol[S_contra]):
    """What the policy needs from an engine's KV bookkeeping."""

    def preemptible(self, s: S_contra) -> bool:
        """Whether the busy sequence holds KV that preempting it would give back (and it may be recomputed)."""
        ...

    def fits(self, s: S_contra, protect: Collection[int], also: Collection[S_contra]) -> bool:
        """Whether what `s` waits for fits once every idle sequence not in protect and those in `also` are gone."""
        ...

    def preempt_for(self, s: S_contra, victims: Sequence[S_contra], protect: Collection[int]) -> None:
        """Give `s` the KV it lacks from the busy victims (their tails first, as an eviction takes them); what
        they gave back is recomputed from their tokens when they are scheduled again."""
        ...


class Preemption(Generic[S]):
    """Arrival order of the work on one engine's sequences, and who gives KV back when an older one lacks it."""

    def __init__(self, table: Iterable[S], room: Room[S], pin_wait_s: float = 30.0) -> None:
        self._table = table
        self._room = room
        self._clock = itertools.count(1)
        # seq id -> (the work it was given for: a Generation or a waiter's future, None while idle; its ticket)
        self._arrivals: dict[int, tuple[object | None, int]] = {}
        self.pin_wait_s = pin_wait_s
        self._pin_waits: dict[int, float] = {}  # seq id -> when its work stops waiting for pins (monotonic)
        self.count = 0

    def observe(self) -> None:
        """Give new work its arrival ticket (call at the start of each scheduling pass); work on a sequence that
        was busy at the last pass, or idle at that pass only, keeps the ticket it had."""
        seen: dict[int, tuple[object | None, int]] = {}
        for s in self._table:
            work = _work(s)
            known = self._arrivals.get(s.id)
            if work is None:
                if known is not None and known[0] is not None:
                    seen[s.id] = (None, known[1])  # its turn is kept one pass for work that follows at once
                continue
            # Work that follows the sequence's previous work at once (a generation right after its prompt's
            # append) continues that work's turn: ticketed anew, it would be the first preempted for work that
            # arrived while its prompt was computed, losing the KV just computed for it.
            seen[s.id] = (work, next(self._clock)) if known is None else (work, known[1])
        self._pin_waits = {i: t for i, t in self._pin_waits.items()
                           if i in seen and i in self._arrivals and seen[i][0] is self._arrivals[i][0]}
        self._arrivals = seen

    def arrival(self, s: S) -> int:
        """The ticket of the sequence's current work (lower arrived earlier); idle sequences rank first."""
        known = self._arrivals.get(s.id)
        return 0 if known is None or known[0] is None else known[1]

    def make_room(self, s: S, protect: Collection[int]) -> list[S] | None:
        """Preempt the fewest, most recently arrived, works that let `s` fit; the preempted ones are returned.

        [] means `s` must wait for older work to end or for pins to end (`wake_at`); None means it is
        refused: it cannot fit even if every other unpinned sequence gave its KV back, and no pin's end would
        help within `pin_wait_s`. Nothing is preempted unless it makes `s` fit.
        """
        # Busy unpinned work gives its KV back when it ends even if it may not be preempted (a score's fork).
        others = [v for v in self._table if v.id != s.id and _work(v) is not None and not v.pinned]
        if not self._room.fits(s, {s.id}, others):
            pinned = [v for v in self._table if v.id != s.id and v.pinned]
            if pinned and self._room.fits(s, {s.id}, [*others, *pinned]) and self._may_wait(s):
                return []
            self._pin_waits.pop(s.id, None)
            return None
        self._pin_waits.pop(s.id, None)
        mine = self.arrival(s)
        younger = sorted((v for v in others if self.arrival(v) > mine and self._room.preemptible(v)),
                         key=self.arrival, reverse=True)
        if not younger or not self._room.fits(s, _without(protect, younger), younger):
            return []
        for n in range(1, len(younger) + 1):
            victims = younger[:n]
            if self._room.fits(s, _without(protect, victims), victims):
                self._room.preempt_for(s, victims, _without(protect, victims))
                self.count += len(victims)
                return victims
        return []  # pragma: no cover - the whole younger set fits, so some prefix of it does

    def wake_at(self, waiting: Iterable[S]) -> float | None:
        """When the waiting work must be looked at again even if nothing wakes the engine: the first pin TTL to
        end or wait for pins to run out (time.monotonic(); None: none of it waits for pins)."""
        waits = [self._pin_waits[s.id] for s in waiting if s.id in self._pin_waits]
        if not waits:
            return None
        ttls = [v.pinned_until for v in self._table if v.pinned and v.pinned_until is not None]
        return min([*waits, *(t for t in ttls if math.isfinite(t))])

    def _may_wait(self, s: S) -> bool:
        """Whether the work of `s` may (still) wait for pins; its wait starts now if it was not waiting."""
        now = time.monotonic()
        return now < self._pin_waits.setdefault(s.id, now + self.pin_wait_s)


def take_tails(need: int, victims: Sequence[S], reclaimable: Callable[[], int],
               cut_tail: Callable[[S, int], object], preempt: Callable[[S], None]) -> None:
    """Free `need` units of KV from busy victims as an eviction would (how both engines' `Room.preempt_for` give):
    their own tails first, in the victims' order and only as many as lacking; whole victims only where KV they
    share is what is lacking. `reclaimable()` counts what is free or would be once idle sequences go."""
    for v in victims:
        short = need - reclaimable()
        if short <= 0:
            return
        log.debug("preempting the tail of sequence %d", v.id)
        cut_tail(v, short)
    for v in victims:
        if reclaimable() >= need:
            return
        preempt(v)


def priority(s: LocalSequence) -> int:
    """The priority of the sequence's work (lower is served first): its generation's; an open/append has 0."""
    return s.generation.params.priority if s.generation is not None else 0


def _work(s: LocalSequence) -> object | None:
    """What the sequence is busy with (a generation or its first waiter), or None when idle."""
    if s.generation is not None:
        return s.generation
    return s.waiters[0].future if s.waiters else None


def _without(protect: Collection[int], victims: Collection[LocalSequence]) -> set[int]:
    return set(protect) - {v.id for v in victims}
