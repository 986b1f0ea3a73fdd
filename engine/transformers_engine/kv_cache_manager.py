"""Which KV blocks each sequence holds: prefix-cache hits, allocation with LRU tail eviction, preemption, forks.

It works on block ids only (through the BlockPool); the tensors behind them belong to the model runner, so a
fork that must copy a partial block hands back a BlockCopy for the runner to perform.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..block_pool import BlockPool, chain_hash
from ..errors import CapacityError
from ..preemption import take_tails
from ..sequence_table import SequenceTable
from .sequence_state import SeqState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockCopy:
    """Copy the KV of block `src` into block `dst` (a fork's own copy of its parent's partial last block)."""

    src: int
    dst: int


class KVCacheManager:
    """Hands out KV blocks to the sequences of one table and takes them back, evicting idle ones when short."""

    def __init__(self, pool: BlockPool, table: SequenceTable[SeqState]) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self._table = table
        self._clock = itertools.count(1)
        self.evictions = 0

    def touch(self, s: SeqState) -> None:
        """Mark the sequence as just used (eviction takes the least recently used idle sequence first)."""
        s.last_used = next(self._clock)

    def blocks_needed(self, s: SeqState, count: int) -> int:
        """Blocks the sequence lacks to hold the KV of its next `count` tokens."""
        return -(-(s.num_computed + count) // self.block_size) - len(s.blocks)

    def match_prefix(self, s: SeqState) -> None:
        """Start the sequence on the longest run of cached blocks matching its tokens (counted as reused).

        Tokens below `recompute_until` were counted once already (computed or reused before an eviction), so a
        re-match after an eviction counts only what lies beyond them.
        """
        # Keep at least the last token to compute: its logits are what generation starts from.
        n = (len(s.tokens) - 1) // self.block_size
        found = self.pool.lookup(self._full_hashes(s, n), self._block_tokens(s, n), s.cache_salt) if n > 0 else []
        s.blocks = found
        s.registered = len(found)
        s.num_computed = len(found) * self.block_size
        self._table.account(s, reused=max(0, s.num_computed - s.recompute_until))

    def fork(self, parent: SeqState, child: SeqState, protect: Collection[int]) -> BlockCopy | None:
        """Give child the parent's computed KV: full blocks shared, the partial last block copied."""
        bs = self.block_size
        child.cache_salt = parent.cache_salt
        child.hashes, child.registered = list(parent.hashes), parent.registered
        n_full = parent.num_computed // bs
        child.blocks = list(parent.blocks[:n_full])
        self.pool.share(child.blocks)
        copy = None
        if parent.num_computed % bs:
            got = self.allocate(1, protect)
            if got is None:
                self.pool.release(child.blocks)
                raise CapacityError("no free KV block to fork into; close sequences or raise the KV budget")
            copy = BlockCopy(parent.blocks[n_full], got[0])
            child.blocks.append(got[0])
        child.num_computed = parent.num_computed
        self._table.account(child, reused=parent.num_computed)
        self.touch(child)
        return copy

    def place(self, s: SeqState, count: int, protect: Collection[int]) -> bool:
        """Start a new sequence on its cached prefix and give it blocks for its next `count` tokens (evicting
        idle sequences if short); False if even that is not enough for all it has pending."""
        if s.num_computed == 0 and not s.blocks:
            self.match_prefix(s)
        # Judge the whole sequence, not this chunk: a prompt that can never fit fails before any eviction.
        if not self.can_fit(self.blocks_needed(s, s.pending), protect):
            return False
        blocks = self.allocate(self.blocks_needed(s, min(count, s.pending)), protect)
        if blocks is None:  # pragma: no cover - the whole of what is pending was judged to fit
            return False
        s.blocks.extend(blocks)
        return True

    def reserve_spare(self, s: SeqState, count: int, n: int) -> int:
        """Up to n more tokens' blocks after the next `count`, from free blocks only; how many tokens got room."""
        room = (len(s.blocks) + self.pool.free_count) * self.block_size - (s.num_computed + count)
        n = max(0, min(n, room))
        need = self.blocks_needed(s, count + n)
        if need > 0:
            s.blocks.extend(self.pool.allocate(need) or [])
        return n

    def allocate(self, n: int, protect: Collection[int]) -> list[int] | None:
        """n new blocks, taking idle sequences' KV if short (tails first, see `free_tail`); None if short even so."""
        if n <= 0:
            return []
        got = self.pool.allocate(n)
        if got is not None:
            return got
        if not self.can_fit(n, protect):
            return None  # evicting would not be enough: keep every idle sequence's KV
        idle = sorted((s for s in self._table if s.evictable and s.id not in protect), key=lambda s: s.last_used)
        # As SGLang's radix cache evicts leaves: the least recently used sequences give back their own tail
        # blocks first, and only as many as the step lacks, so each keeps its head and every block it shares.
        for victim in idle:
            self.free_tail(victim, n - self.pool.free_count)
            if self.pool.free_count >= n:
                return self.pool.allocate(n)
        # Still short: what is left is shared among idle sequences, and comes back only once all its holders go.
        for victim in idle:
            if victim.blocks:
                self.evict(victim)
            if self.pool.free_count >= n:
                return self.pool.allocate(n)
        return None  # pragma: no cover - can_fit said evicting every idle sequence frees enough

    def free_tail(self, s: SeqState, n: int) -> int:
        """Evict up to n of an idle sequence's last blocks that no other sequence holds; how many were freed.

        Its tokens stay: what the blocks held is recomputed when the sequence is used again (`num_computed`
        drops to the kept blocks, `recompute_until` marks the rest as recompute).
        """
        freed, fresh = self._cut_tail(s, n)
        self.evictions += fresh
        return freed

    def _cut_tail(self, s: SeqState, n: int) -> tuple[int, bool]:
        """Release up to n of the sequence's last blocks only it holds: (how many, whether a new eviction)."""
        keep = len(s.blocks)
        while keep > 0 and len(s.blocks) - keep < n and self.pool.refcount(s.blocks[keep - 1]) == 1:
            keep -= 1
        freed = len(s.blocks) - keep
        if not freed:
            return 0, False
        log.debug("sequence %d gives back its last %d blocks", s.id, freed)
        return freed, self._truncate(s, keep)

    def can_fit(self, n: int, protect: Collection[int], also: Collection[SeqState] = ()) -> bool:
        """Whether n blocks are free now or would be after evicting every idle sequence not in protect (and
        preempting the busy ones in `also`)."""
        return self.pool.free_count >= n or self._reclaimable(protect, also) >= n

    def _reclaimable(self, protect: Collection[int], also: Collection[SeqState] = ()) -> int:
        """Blocks free once every idle sequence not in protect and every one in `also` gave back all its KV."""
        refs: dict[int, int] = {}
        for s in [*(s for s in self._table if s.evictable and s.id not in protect), *also]:
            for b in s.blocks:
                refs[b] = refs.get(b, 0) + 1
        # A block shared with a busy sequence stays referenced: only blocks whose every holder goes come back.
        freed = sum(1 for b, k in refs.items() if self.pool.refcount(b) == k)
        return self.pool.free_count + freed

    def evict(self, s: SeqState) -> None:
        """Drop an idle sequence's KV; it is recomputed from its tokens when the sequence is used again."""
        log.debug("evicting sequence %d (%d tokens)", s.id, s.num_computed)
        if self._truncate(s, 0):
            self.evictions += 1

    def preemptible(self, s: SeqState) -> bool:
        """Whether the busy sequence holds blocks (preempting it gives back those nobody else holds)."""
        return bool(s.blocks)

    def fits(self, s: SeqState, protect: Collection[int], also: Collection[SeqState]) -> bool:
        """Whether all the sequence's pending tokens fit once idle sequences not in protect and `also` are gone."""
        return self.can_fit(self.blocks_needed(s, s.pending), protect, also)

    def preempt(self, s: SeqState) -> None:
        """Drop a busy sequence's KV (recompute preemption); its work resumes by recomputing its tokens."""
        log.debug("preempting sequence %d (%d tokens)", s.id, s.num_computed)
        self._drop(s)

    def preempt_for(self, s: SeqState, victims: Sequence[SeqState], protect: Collection[int]) -> None:
        """Give `s` the blocks it lacks from busy victims, tail blocks first (`take_tails`). Idle sequences not
        in protect are counted as going (allocation takes theirs first)."""
        take_tails(self.blocks_needed(s, s.pending), victims, lambda: self._reclaimable(protect), self._cut_tail,
                   self.preempt)

    def _drop(self, s: SeqState) -> None:
        self._truncate(s, 0)

    def _truncate(self, s: SeqState, keep: int) -> bool:
        """Keep the sequence's first `keep` blocks, the computed tokens beyond them to be recomputed; whether it
        held all it had computed until now (a new eviction, not a sequence already cut shorter)."""
        self.pool.release(s.blocks[keep:])
        del s.blocks[keep:]
        s.registered = min(s.registered, keep)
        kept = min(s.num_computed, keep * self.block_size)
        if kept >= s.num_computed:
            return False
        fresh = s.num_computed >= s.recompute_until
        s.recompute_until = max(s.recompute_until, s.num_computed)
        self._table.account(s, evicted=s.num_computed - kept)
        s.num_computed = kept
        s.last_logits = None  # sampled_pos stays: that token is still uncomputed, a decode when computed
        return fresh

    def free(self, s: SeqState) -> None:
        """Release the sequence's blocks (full ones stay in the prefix cache until reused)."""
        self.pool.release(s.blocks)
        s.blocks = []

    def register_full_blocks(self, s: SeqState) -> None:
        """Enter the sequence's newly completed blocks in the prefix cache."""
        n_full = s.num_computed // self.block_size
        if n_full > s.registered:
            hashes = self._full_hashes(s, n_full)
            tokens = self._block_tokens(s, n_full)
            for i in range(s.registered, n_full):
                self.pool.register(s.blocks[i], hashes[i], tokens[i], s.blocks[i - 1] if i else None, s.cache_salt)
            s.registered = n_full

    def drop_last_full_block(self, s: SeqState) -> None:
        """Give back the block holding the sequence's last computed token, to be recomputed into a fresh one.

        Used when that token must be computed again: its full block is registered and may be shared, so it is
        never written; the sequence recomputes the block's tokens into a block of its own instead.
        """
        keep = s.num_computed // self.block_size - 1
        self.pool.release(s.blocks[keep:])
        del s.blocks[keep:]
        s.registered = min(s.registered, keep)
        s.num_computed = keep * self.block_size

    def drop_stale_hashes(self, s: SeqState) -> None:
        """Forget hashes of blocks beyond the sequence's tokens (after tokens were rolled back)."""
        del s.hashes[len(s.tokens) // self.block_size:]

    def _block_tokens(self, s: SeqState, n_blocks: int) -> list[list[int]]:
        bs = self.block_size
        return [s.tokens[i * bs:(i + 1) * bs] for i in range(n_blocks)]

    def _full_hashes(self, s: SeqState, n_blocks: int) -> list[bytes]:
        bs = self.block_size
        while len(s.hashes) < n_blocks:
            i = len(s.hashes)
            s.hashes.append(chain_hash(s.hashes[-1] if i else None, s.tokens[i * bs:(i + 1) * bs], s.cache_salt))
        return s.hashes[:n_blocks]
