"""Which sequences hold KV in the context: slots, cells, prefix sharing, LRU eviction and the closed-prefix cache.

A resident sequence has a llama.cpp sequence id (a slot) and holds cells in the ledger. Opening shares the
longest cached prefix with `seq_cp`; forking shares everything; closing keeps the KV as a prefix cache (as the
embedded engine keeps freed blocks findable) until its cells or slot are wanted. When short of cells or slots,
cached closed sequences go first, then idle unpinned ones, least recently used first; an evicted sequence is
recomputed from its tokens when used again, as is a busy one preempted for older work (engine/preemption.py).
Every method runs while no decode is in flight.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection

from ..errors import CapacityError
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

    def fork(self, parent: LlamaSeq, child: LlamaSeq, protect: Collection[int]) -> None:
        """Give child the parent's computed KV, shared cell by cell (nothing copied, nothing computed)."""
        child.cache_salt = parent.cache_salt
        child.hashes = list(parent.hashes)
        self.touch(child)
        if parent.slot is None or parent.num_computed == 0:
            return  # the parent was evicted: the child computes its tokens when used, as the parent would
        slot = self._take_slot({*protect, parent.id})
        if slot is None:
            raise CapacityError(f"no llama.cpp sequence slot free to fork into (n_seq_max="
                                f"{self._ctx.options.n_seq_max}); close sequences or raise n_seq_max")
        n = parent.num_computed
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

    def reserve_spare(self, s: LlamaSeq, n: int) -> int:
        """Up to n more cells for the sequence from those free now, never evicting (a guess costs nobody their KV);
        how many it got."""
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
        self.index.unregister(s, keep_tokens=n)

    def evict(self, s: LlamaSeq) -> None:
        """Drop an idle sequence's KV; it is recomputed from its tokens when used again."""
        log.debug("evicting sequence %d (%d tokens)", s.id, s.num_computed)
        self._forget(s)
        if s.closed:
            self._closed.pop(s.id, None)
        else:
            self.evictions += 1

    def preemptible(self, s: LlamaSeq) -> bool:
        """Whether the busy sequence is resident and may be recomputed (a score()'s fork collects rows as it
        computes, so it is never preempted)."""
        return s.slot is not None and s.logits_from is None

    def fits(self, s: LlamaSeq, protect: Collection[int], also: Collection[LlamaSeq]) -> bool:
        """Whether a slot and cells for all the sequence's pending tokens can be had once cached closed
        sequences, idle ones not in protect and those in `also` are gone."""
        victims = [*self._victims(protect), *also]
        if s.slot is None:
            if not self._free_slots and not victims:
                return False
            holder, n = self.index.longest(s)
            going = {v.id for v in also}
            shared = n if holder is not None and holder.slot is not None and holder.id not in going else 0
            need = len(s.tokens) - shared
        else:
            need = s.pending - (len(s.cells) - s.num_computed)
        return self.ledger.free_count + self.ledger.freed_by(v.cells for v in victims) >= need

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

    def _forget(self, s: LlamaSeq) -> None:
        s.recompute_until = max(s.recompute_until, s.num_computed)
        self._drop(s)
        s.last_logits = None  # sampled_pos stays: that token is still uncomputed, a decode when computed

    def _drop(self, s: LlamaSeq) -> None:
        if s.slot is not None:
            self._ctx.seq_rm(s.slot)
            self._free_slots.append(s.slot)
            s.slot = None
        self.ledger.release(s.cells)
        s.cells = []
        s.num_computed = 0
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
        for victim in self._victims(protect):
            self.evict(victim)
            if self.ledger.free_count >= n:
                return self.ledger.allocate(n)
        return None
