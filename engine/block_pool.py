"""KV block bookkeeping: refcounted fixed-size blocks, a verified prefix cache and an LRU free queue.

Pure Python, no tensors: the pool only decides which block ids hold which tokens. A full block is immutable
and may be shared by many sequences (prefix sharing); a sequence owns its last, partial block alone.
Freed blocks keep their cache entry until reused, so a sequence opened later with the same prefix finds them.

Cache keys are SHA-256 digests chained over the parent's digest, the block's token ids and an optional salt
(as vLLM does since CVE-2025-25183), and a hit is only taken after comparing what the block really holds:
its tokens, its salt and the exact block before it. So even a forged digest collision is a miss, never
another request's KV.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

BlockKey = bytes  # a SHA-256 digest


def chain_hash(parent: BlockKey | None, tokens: Sequence[int], salt: str | None = None) -> BlockKey:
    """Key of a full block given the key of everything before it (None for the first block)."""
    h = hashlib.sha256()
    # Length-prefixed fields: no two different (parent, salt, tokens) triples feed the same bytes.
    h.update(b"\x01" + parent if parent is not None else b"\x00")
    salt_bytes = salt.encode() if salt is not None else b""
    h.update(struct.pack("<BI", salt is not None, len(salt_bytes)) + salt_bytes)
    h.update(struct.pack(f"<I{len(tokens)}q", len(tokens), *tokens))
    return h.digest()


@dataclass(frozen=True)
class BlockContent:
    """What a cached full block holds: its tokens, its salt and the (block, reuse epoch) computed before it."""

    tokens: tuple[int, ...]
    salt: str | None
    parent: tuple[int, int] | None


class BlockPool:
    """Owns every KV block id: who references it, what prefix it caches, which is reused next."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs = [0] * num_blocks
        self._key_of: list[BlockKey | None] = [None] * num_blocks
        self._content: list[BlockContent | None] = [None] * num_blocks
        self._epoch = [0] * num_blocks  # bumped on every reuse, so a stale parent link never matches
        self._cached: dict[BlockKey, int] = {}  # chain key -> block id
        # Blocks with no reference, in reuse order; popping from the front reuses the least recently freed.
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
            old = self._key_of[block]
            if old is not None:
                if self._cached.get(old) == block:
                    del self._cached[old]
                self._key_of[block] = None
                self._content[block] = None
            self._epoch[block] += 1
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
        """Drop one reference from each block of one chain; unreferenced blocks become free, tail first.

        The chain's last block is queued for reuse first and its first block last: a chain is only found from
        its head, so reusing the head first would make every block after it unfindable.
        """
        for b in reversed(blocks):
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free[b] = None
            elif self._refs[b] < 0:  # pragma: no cover - would mean a bookkeeping bug
                raise RuntimeError(f"block {b} released more often than referenced")

    def register(self, block: int, key: BlockKey, tokens: Sequence[int], parent: int | None,
                 salt: str | None = None) -> None:
        """Record that a now-full block caches `tokens` after the block `parent` (None: the first block)."""
        if self._key_of[block] is not None:
            return  # a block's entry never changes while it holds data
        link = None if parent is None else self._canonical(parent)
        self._key_of[block] = key
        self._content[block] = BlockContent(tuple(tokens), salt, None if link is None else (link, self._epoch[link]))
        self._cached.setdefault(key, block)

    def lookup(self, keys: Sequence[BlockKey], blocks_tokens: Sequence[Sequence[int]],
               salt: str | None = None) -> list[int]:
        """Longest run of cached blocks holding exactly these blocks of tokens, referenced for the caller."""
        found: list[int] = []
        for key, tokens in zip(keys, blocks_tokens, strict=True):
            b = self._cached.get(key)
            parent = None if not found else (found[-1], self._epoch[found[-1]])
            if b is None or self._content[b] != BlockContent(tuple(tokens), salt, parent):
                break  # a digest match with other content is a miss (a forged or accidental collision)
            found.append(b)
        self.share(found)
        return found

    def refcount(self, block: int) -> int:
        """References to one block (tests and stats)."""
        return self._refs[block]

    def is_cached(self, block: int) -> bool:
        """Whether the block is registered in the prefix cache (then its KV must never be written)."""
        return self._key_of[block] is not None

    def _canonical(self, block: int) -> int:
        """The block lookups return for the same content as `block` (itself unless another copy came first)."""
        key = self._key_of[block]
        other = self._cached.get(key) if key is not None else None
        if other is not None and self._content[other] == self._content[block]:
            return other
        return block
