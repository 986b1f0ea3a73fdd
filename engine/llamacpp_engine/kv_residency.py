"""Which sequences hold KV in the context: slots, cells, prefix sharing, LRU eviction and the closed-prefix cache.

A resident sequence has a llama.cpp sequence id (a slot) and holds cells in the ledger. Opening shares the
longest cached prefix with `seq_cp`; forking shares everything; closing keeps the KV as a prefix cache (as the
embedded engine keeps freed blocks findable) until its cells or slot are wanted. When short of cells, cached
closed sequences go first, then idle unpinned ones give back their tail cells, least recently used first (a slot
takes a whole sequence); what an eviction dropped is recomputed from the tokens when the sequence is used again,
as is a busy sequence preempted for older work (engine/preemption.py).
Every method runs while no decode is in flight.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Sequence

from ..errors import CapacityError
from ..preemption import take_tails
from ..sequence_table import SequenceTable
from .cell_ledger import CellLedger
from .context import LlamaContext
from .prefix_index import PrefixIndex
from .sequence_state import LlamaSeq

log = logging.getLogger(__name__)


class KVResidency:
    """Slots and cells of one context's sequences, with the prefix index and eviction."""

    def __init__(self, ctx: LlamaContext, table: SequenceTable[LlamaSeq], budget_cells: int, block_size: int,
                 keep_closed: bool = True) -> None:
        self._ctx = ctx
        self._table = table
        self.ledger = CellLedger(budget_cells)
        self.index = PrefixIndex(block_size)
        self._free_slots = list(range(ctx.options.n_seq_max - 1, -1, -1))
        self._closed: dict[int, LlamaSeq] = {}  # closed sequences whose KV is kept as a prefix cache
        self._keep_closed = keep_closed
        self._clock = itertools.count(1)
        self.evictions = 0

    def touch(self, s: LlamaSeq) -> None:
        """Mark the sequence as just used (eviction takes the least recently used first)."""
        s.last_used = next(self._clock)

    # ---------------------------------------------------------------- residency

    def make_resident(self, s: LlamaSeq, protect: Collection[int]) -> bool:
        """Give a non-resident sequence a slot and its longest cached prefix; False if no slot can be had."""
        if s.slot is not None:
            return True
        slot = self._take_slot(protect)
        if slot is None:
            return False
        s.slot = slot
        holder, n = self.index.longest(s)
        if holder is not None and holder.slot is not None:
            self._ctx.seq_cp(holder.slot, slot, n)
            s.cells = holder.cells[:n]
            self.ledger.share(s.cells)
            s.num_computed = n
            self.touch(holder)  # a prefix in use is worth keeping
        self._table.account(s, reused=max(0, s.num_computed - s.recompute_until))
        self.index.register(s)
        return True

    def fork(self, parent: LlamaSeq, child: LlamaSeq, protect: Collection[int], upto: int | None = None) -> None:
        """Give child the parent's computed KV (of its first `upto` positions), shared cell by cell (nothing
        copied, nothing computed)."""
        child.cache_salt = parent.cache_salt
        n = parent.num_computed if upto is None else min(upto, parent.num_computed)
        child.hashes = list(parent.hashes) if upto is None else parent.hashes[:n // self.index.block_size]
        child.moved_from = parent.moved_from if parent.moved_from is not None and parent.moved_from < n else None
        self.touch(child)
        if parent.slot is None or n == 0:
            return  # the parent was evicted: the child computes its tokens when used, as the parent would
        slot = self._take_slot({*protect, parent.id})
        if slot is None:
            raise CapacityError(f"no llama.cpp sequence slot free to fork into (n_seq_max="
                                f"{self._ctx.options.n_seq_max}); close sequences or raise n_seq_max")
        self._ctx.seq_cp(parent.slot, slot, n)
        child.slot = slot
        child.cells = parent.cells[:n]
        self.ledger.share(child.cells)
        child.num_computed = n
        self._table.account(child, reused=n)
        self.index.register(child)

    def reserve(self, s: LlamaSeq, count: int, protect: Collection[int]) -> bool:
        """Cells for the sequence's next `count` tokens (evicting if short); False if even eviction cannot.

        The whole of what is pending is judged, not this chunk: a prompt that can never fit fails before any
        eviction.
        """
        have = len(s.cells) - s.num_computed  # cells already reserved ahead (none between steps)
        if not self.can_fit(s.pending - have, protect):
            return False
        got = self._allocate(count - have, protect)
        if got is None:
            return False
        s.cells.extend(got)
        return True

    def place(self, s: LlamaSeq, count: int, protect: Collection[int]) -> bool:
        """Give the sequence a slot, its cached prefix and cells for `count` tokens (evicting idle ones if short)."""
        return self.make_resident(s, protect) and self.reserve(s, min(count, s.pending), protect)

    def reserve_spare(self, s: LlamaSeq, count: int, n: int) -> int:
        """Up to n more cells after the next `count` tokens (already reserved) from those free now, never
        evicting (a guess costs nobody their KV); how many it got."""
        got = self.ledger.allocate(min(n, self.ledger.free_count)) or []
        s.cells.extend(got)
        return len(got)

    def can_fit(self, n: int, protect: Collection[int]) -> bool:
        """Whether n cells are free now or would be after evicting every evictable sequence not in protect."""
        if self.ledger.free_count >= n:
            return True
        return self.ledger.free_count + self.ledger.freed_by(v.cells for v in self._victims(protect)) >= n

    def truncate(self, s: LlamaSeq, n: int) -> None:
        """Drop the sequence's KV from position n on (cells, slot positions, index entries)."""
        if s.slot is not None and len(s.cells) > n:
            self._ctx.seq_rm(s.slot, n)
        self.ledger.release(s.cells[n:])
        del s.cells[n:]
        s.num_computed = min(s.num_computed, n)
        if s.moved_from is not None and s.moved_from >= n:
            s.moved_from = None  # what was moved is gone: it is recomputed in order
        self.index.unregister(s, keep_tokens=n)

    def movable(self, s: LlamaSeq, at: int) -> bool:
        """Whether the sequence's KV from position `at` on is all computed and its own, so it can be moved."""
        after = len(s.cells) - at
        return (s.slot is not None and after > 0 and len(s.cells) == s.num_computed
                and self.ledger.unshared_tail(s.cells, after) == after)

    def splice(self, s: LlamaSeq, donor: LlamaSeq, at: int, n: int) -> None:
        """Put the donor's KV of positions at..at+n-1 into the sequence at `at`, its own KV from `at` on moved n
        positions on (see `movable`; the donor shares the sequence's first `at` positions)."""
        assert s.slot is not None and donor.slot is not None
        self._ctx.seq_shift(s.slot, at, n)  # first, so that the cells shared next are not moved too
        self._ctx.seq_cp(donor.slot, s.slot, at + n, start=at)
        cells = donor.cells[at:at + n]
        self.ledger.share(cells)
        s.cells[at:at] = cells
        s.num_computed += n
        self.index.unregister(s, keep_tokens=at)
        del s.hashes[at // self.index.block_size:]
        if s.moved_from is None or s.moved_from >= at:
            s.moved_from = at + n

    def evict(self, s: LlamaSeq) -> None:
        """Drop an idle sequence's KV; it is recomputed from its tokens when used again."""
        log.debug("evicting sequence %d (%d tokens)", s.id, s.num_computed)
        if self._forget(s):
            self.evictions += 1
        if s.closed:
            self._closed.pop(s.id, None)

    def preemptible(self, s: LlamaSeq) -> bool:
        """Whether the busy sequence is resident and may be recomputed (a score()'s fork collects rows as it
        computes, so it is never preempted)."""
        return s.slot is not None and s.logits_from is None

    def fits(self, s: LlamaSeq, protect: Collection[int], also: Collection[LlamaSeq]) -> bool:
        """Whether a slot and cells for all the sequence's pending tokens can be had once cached closed
        sequences, idle ones not in protect and those in `also` are gone."""
        if s.slot is None and not self._free_slots and not self._victims(protect) and not also:
            return False
        return self._reclaimable(protect, also) >= self._need(s, also)

    def _need(self, s: LlamaSeq, going: Collection[LlamaSeq]) -> int:
        """Cells the sequence lacks for all its pending tokens (its cached prefix counted unless its holder is
        going)."""
        if s.slot is None:
            holder, n = self.index.longest(s)
            gone = {v.id for v in going}
            shared = n if holder is not None and holder.slot is not None and holder.id not in gone else 0
            return len(s.tokens) - shared
        return s.pending - (len(s.cells) - s.num_computed)

    def _reclaimable(self, protect: Collection[int], also: Collection[LlamaSeq] = ()) -> int:
        """Cells free once cached closed sequences, idle ones not in protect and those in `also` are gone."""
        return self.ledger.free_count + self.ledger.freed_by(v.cells for v in [*self._victims(protect), *also])

    def preempt(self, s: LlamaSeq) -> None:
        """Drop a busy sequence's KV (recompute preemption); its work resumes by recomputing its tokens."""
        log.debug("preempting sequence %d (%d tokens)", s.id, s.num_computed)
        self._forget(s)

    def close(self, s: LlamaSeq) -> None:
        """A closed sequence: its KV stays as a prefix cache if it holds a full block, else it is freed."""
        s.generation, s.waiters, s.last_logits = None, [], None
        keep = s.indexed * self.index.block_size
        if self._keep_closed and s.slot is not None and keep > 0:
            self.truncate(s, keep)
            self._closed[s.id] = s
        else:
            self._drop(s)

    def drop_closed(self) -> None:
        """Free the KV every closed sequence still keeps as a prefix cache."""
        for s in list(self._closed.values()):
            self._drop(s)
        self._closed.clear()

    # ---------------------------------------------------------------- gauges

    def live_cells(self) -> int:
        """Cells held by open sequences (a prefix cache of closed ones is free to take)."""
        cached = self.ledger.freed_by(s.cells for s in self._closed.values())
        return self.ledger.used_count - cached

    # ---------------------------------------------------------------- internals

    def _forget(self, s: LlamaSeq) -> bool:
        """Drop all the sequence's KV, to be recomputed; whether that was a new eviction (see `_give_back`)."""
        fresh = self._give_back(s, 0)
        self._drop(s)
        return fresh

    def _give_back(self, s: LlamaSeq, kept: int) -> bool:
        """Book the computed tokens beyond `kept` as given back, to be recomputed when the sequence goes on;
        whether it held all it had computed until now (a new eviction, not a sequence already cut shorter)."""
        if s.closed or kept >= s.num_computed:  # a closed sequence's cached KV is never recomputed
            return False
        fresh = s.num_computed >= s.recompute_until
        s.recompute_until = max(s.recompute_until, s.num_computed)
        self._table.account(s, evicted=s.num_computed - kept)
        s.last_logits = None  # sampled_pos stays: that token is still uncomputed, a decode when computed
        return fresh

    def _drop(self, s: LlamaSeq) -> None:
        if s.slot is not None:
            self._ctx.seq_rm(s.slot)
            self._free_slots.append(s.slot)
            s.slot = None
        self.ledger.release(s.cells)
        s.cells = []
        s.num_computed = 0
        s.moved_from = None
        self.index.unregister(s)

    def _victims(self, protect: Collection[int]) -> list[LlamaSeq]:
        """Sequences whose KV may go, in eviction order: cached closed ones, then idle open ones, LRU first."""
        closed = sorted(self._closed.values(), key=lambda s: s.last_used)
        idle = sorted((s for s in self._table if s.evictable and s.id not in protect), key=lambda s: s.last_used)
        return [*closed, *idle]

    def _take_slot(self, protect: Collection[int]) -> int | None:
        if not self._free_slots:
            victims = self._victims(protect)
            if not victims:
                return None
            self.evict(victims[0])
        return self._free_slots.pop()

    def _allocate(self, n: int, protect: Collection[int]) -> list[int] | None:
        if n <= 0:
            return []
        got = self.ledger.allocate(n)
        if got is not None:
            return got
        victims = self._victims(protect)
        # Cached closed sequences go whole; idle open ones give back only their own tail cells, least recently used
        # first and only as many as the step lacks, keeping their head and every cell they share (as SGLang's radix
        # cache evicts leaves).
        for victim in victims:
            if victim.closed:
                self.evict(victim)
            else:
                self.free_tail(victim, n - self.ledger.free_count)
            if self.ledger.free_count >= n:
                return self.ledger.allocate(n)
        # Still short: what is left is shared among idle sequences, and comes back only once all its holders go.
        for victim in victims:
            if victim.slot is not None:
                self.evict(victim)
            if self.ledger.free_count >= n:
                return self.ledger.allocate(n)
        return None

    def free_tail(self, s: LlamaSeq, n: int) -> int:
        """Evict up to n of an idle sequence's last cells that no other sequence holds (`llama_memory_seq_rm`
        from the first of them on); how many were freed. Its tokens stay: what the cells held is recomputed
        when the sequence is used again."""
        freed, fresh = self._cut_tail(s, n)
        self.evictions += fresh
        return freed

    def preempt_for(self, s: LlamaSeq, victims: Sequence[LlamaSeq], protect: Collection[int]) -> None:
        """Give `s` what it lacks from busy victims: a whole victim for a slot if one is lacking, then tail cells
        first (`take_tails`). Cached closed and idle sequences not in protect are counted as going (allocation
        takes theirs first)."""
        rest = list(victims)
        if s.slot is None and not self._free_slots and not self._victims(protect):
            self.preempt(rest.pop(0))  # only a whole sequence gives a slot back
        take_tails(self._need(s, victims), rest, lambda: self._reclaimable(protect), self._cut_tail, self.preempt)

    def _cut_tail(self, s: LlamaSeq, n: int) -> tuple[int, bool]:
        """Drop up to n of the sequence's last cells only it holds: (how many, whether a new eviction)."""
        freed = self.ledger.unshared_tail(s.cells, n)
        if not freed:
            return 0, False
        if freed == len(s.cells):
            return freed, self._forget(s)  # nothing kept: its slot goes too, it re-shares a cached prefix later
        log.debug("sequence %d gives back its last %d cells", s.id, freed)
        keep = len(s.cells) - freed
        fresh = self._give_back(s, min(s.num_computed, keep))
        self.truncate(s, keep)
        return freed, fresh
