"""KV block bookkeeping: refcounted fixed-size blocks, a prefix-hash cache and an LRU free queue.

Pure Python, no tensors: the pool only decides which block ids hold which tokens. A full block is immutable
and may be shared by many sequences (prefix sharing); a sequence owns its last, partial block alone.
Freed blocks keep their hash until reused, so a sequence opened later with the same prefix finds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

NO_HASH = 0


def chain_hash(parent: int, tokens: Sequence[int]) -> int:
    """Hash of a full block given the hash of everything before it (position-dependent by construction)."""
    return hash((parent, tuple(tokens)))


class BlockPool:
    """Owns every KV block id: who references it, what prefix it caches, which is reused next."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs = [0] * num_blocks
        self._hash_of = [NO_HASH] * num_blocks
        self._cached: dict[int, int] = {}  # chain hash -> block id
        # Blocks with no reference, oldest first; popping from the front reuses the least recently freed.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    @property
    def free_count(self) -> int:
        """Blocks that can be handed out now (cached-but-unreferenced ones included)."""
        return len(self._free)

    @property
    def used_count(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """Take n blocks, or None (and take nothing) if fewer than n are free."""
        if n > len(self._free):
            return None
        out = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            old = self._hash_of[block]
            if old != NO_HASH:
                if self._cached.get(old) == block:
                    del self._cached[old]
                self._hash_of[block] = NO_HASH
            self._refs[block] = 1
            out.append(block)
        return out

    def share(self, blocks: Sequence[int]) -> None:
        """Add a reference to blocks another sequence already holds."""
        for b in blocks:
            if self._refs[b] == 0:
                del self._free[b]
            self._refs[b] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference from each block; unreferenced blocks become free but keep their cached prefix."""
        for b in blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free[b] = None
            elif self._refs[b] < 0:  # pragma: no cover - would mean a bookkeeping bug
                raise RuntimeError(f"block {b} released more often than referenced")

    def register(self, block: int, block_hash: int) -> None:
        """Record that a now-full block caches the prefix identified by block_hash."""
        if self._hash_of[block] == NO_HASH:
            self._hash_of[block] = block_hash
            self._cached.setdefault(block_hash, block)

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Longest run of cached blocks matching the given chain hashes, referenced for the caller."""
        found: list[int] = []
        for h in hashes:
            b = self._cached.get(h)
            if b is None:
                break
            found.append(b)
        self.share(found)
        return found

    def refcount(self, block: int) -> int:
        """References to one block (tests and stats)."""
        return self._refs[block]
