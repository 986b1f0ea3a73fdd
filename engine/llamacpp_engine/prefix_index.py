"""Which resident sequence holds the KV of a token prefix: the embedded engine's chained block keys, over slots.

Every full block of tokens a resident sequence has computed is entered under its chain key (block_pool's
`chain_hash`: the key of everything before it, the block's tokens and the cache salt). A new sequence walks its
own keys and shares, with `seq_cp`, the cells of the sequence holding its longest cached run of blocks. A key
match is only taken after comparing the tokens and the salt themselves, so a collision is a miss, never another
tenant's KV.
"""

from __future__ import annotations

from ..block_pool import chain_hash
from .sequence_state import LlamaSeq


class PrefixIndex:
    """Chain key of a computed full block -> the resident sequences holding it."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._holders: dict[bytes, dict[int, LlamaSeq]] = {}

    def keys(self, s: LlamaSeq, n_blocks: int) -> list[bytes]:
        """Chain keys of the sequence's first n_blocks full blocks (cached on the sequence)."""
        bs = self.block_size
        while len(s.hashes) < n_blocks:
            i = len(s.hashes)
            s.hashes.append(chain_hash(s.hashes[-1] if i else None, s.tokens[i * bs:(i + 1) * bs], s.cache_salt))
        return s.hashes[:n_blocks]

    def register(self, s: LlamaSeq) -> None:
        """Enter the sequence's newly computed full blocks."""
        exact = s.num_computed if s.moved_from is None else min(s.num_computed, s.moved_from)
        n_full = exact // self.block_size
        if n_full > s.indexed:
            for key in self.keys(s, n_full)[s.indexed:]:
                self._holders.setdefault(key, {})[s.id] = s
            s.indexed = n_full

    def unregister(self, s: LlamaSeq, keep_tokens: int = 0) -> None:
        """Forget the sequence's blocks beyond its first keep_tokens tokens (all of them by default)."""
        keep = min(keep_tokens // self.block_size, s.indexed)
        for key in s.hashes[keep:s.indexed]:
            holders = self._holders.get(key)
            if holders is not None:
                holders.pop(s.id, None)
                if not holders:
                    del self._holders[key]
        s.indexed = keep
        del s.hashes[len(s.tokens) // self.block_size:]

    def longest(self, s: LlamaSeq) -> tuple[LlamaSeq | None, int]:
        """The resident sequence holding s's longest cached prefix, and its length in tokens (a block multiple).

        The last token is always left to compute: its logits are what a generation starts from.
        """
        n = (len(s.tokens) - 1) // self.block_size
        best: tuple[LlamaSeq | None, int] = (None, 0)
        for i, key in enumerate(self.keys(s, n) if n > 0 else []):
            holders = self._holders.get(key)
            if not holders:
                break
            length = (i + 1) * self.block_size
            holder = next((h for h in holders.values()
                           if h.cache_salt == s.cache_salt and h.tokens[:length] == s.tokens[:length]), None)
            if holder is None:
                break  # a key match with other tokens or another tenant's salt: a collision, taken as a miss
            best = (holder, length)
        return best
