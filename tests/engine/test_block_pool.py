"""BlockPool: allocation, refcounts, prefix-hash cache and reuse order (pure Python, no model)."""

from __future__ import annotations

import pytest

from engine import block_pool
from engine.block_pool import BlockKey, BlockPool, chain_hash


def _hashes(tokens: list[int], block_size: int, salt: str | None = None) -> list[BlockKey]:
    out: list[BlockKey] = []
    for i in range(len(tokens) // block_size):
        out.append(chain_hash(out[-1] if out else None, tokens[i * block_size:(i + 1) * block_size], salt))
    return out


def _blocks(tokens: list[int], block_size: int) -> list[list[int]]:
    return [tokens[i:i + block_size] for i in range(0, len(tokens) - len(tokens) % block_size, block_size)]


def _register(pool: BlockPool, blocks: list[int], tokens: list[int], salt: str | None = None) -> None:
    """Register a chain of full blocks holding `tokens`, as the KV-cache manager does."""
    bs = pool.block_size
    for i, (b, h) in enumerate(zip(blocks, _hashes(tokens, bs, salt), strict=True)):
        pool.register(b, h, tokens[i * bs:(i + 1) * bs], blocks[i - 1] if i else None, salt)


def _lookup(pool: BlockPool, tokens: list[int], salt: str | None = None) -> list[int]:
    return pool.lookup(_hashes(tokens, pool.block_size, salt), _blocks(tokens, pool.block_size), salt)


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        BlockPool(0, 4)
    with pytest.raises(ValueError):
        BlockPool(4, 0)


def test_allocate_is_all_or_nothing() -> None:
    pool = BlockPool(4, 2)
    got = pool.allocate(3)
    assert got is not None and len(set(got)) == 3
    assert pool.free_count == 1 and pool.used_count == 3
    assert pool.allocate(2) is None
    assert pool.free_count == 1, "a failed allocation must take nothing"
    assert all(pool.refcount(b) == 1 for b in got)
    assert pool.allocate(0) == []


def test_share_and_release_refcounts() -> None:
    pool = BlockPool(4, 2)
    a = pool.allocate(2)
    assert a is not None
    pool.share(a)
    assert [pool.refcount(b) for b in a] == [2, 2]
    pool.release(a)
    assert pool.used_count == 2, "still referenced once"
    pool.release(a)
    assert pool.used_count == 0 and pool.free_count == 4


def test_chain_hash_depends_on_position_and_content() -> None:
    h1 = chain_hash(None, [1, 2])
    assert h1 == chain_hash(None, [1, 2])
    assert h1 != chain_hash(None, [2, 1])
    assert chain_hash(h1, [3, 4]) != chain_hash(None, [3, 4]), "same block after a different prefix must differ"
    assert len(h1) == 32, "a SHA-256 digest"
    assert chain_hash(None, [1, 2], "tenant-a") != h1 != chain_hash(None, [1, 2], "tenant-b")
    assert chain_hash(None, [1, 2], "") != h1, "an empty salt is still a salt"
    assert chain_hash(None, [1, 2, 3]) != chain_hash(None, [1, 2], "3"), "fields cannot run into each other"


def test_lookup_finds_longest_cached_run_and_references_it() -> None:
    pool = BlockPool(8, 2)
    tokens = [1, 2, 3, 4, 5, 6]
    blocks = pool.allocate(3)
    assert blocks is not None
    _register(pool, blocks, tokens)
    assert _lookup(pool, tokens) == blocks
    assert [pool.refcount(b) for b in blocks] == [2, 2, 2]
    # A different second block breaks the chain: only the first block matches.
    assert _lookup(pool, [1, 2, 9, 9, 5, 6]) == blocks[:1]
    assert pool.refcount(blocks[0]) == 3
    assert _lookup(pool, [7, 7]) == []


def test_freed_blocks_stay_cached_until_reused() -> None:
    pool = BlockPool(3, 2)
    blocks = pool.allocate(2)
    assert blocks is not None
    _register(pool, blocks, [1, 2, 3, 4])
    pool.release(blocks)
    assert pool.used_count == 0
    # A later sequence with the same prefix finds the freed blocks and takes them off the free list.
    assert _lookup(pool, [1, 2, 3, 4]) == blocks
    assert pool.used_count == 2 and pool.free_count == 1
    pool.release(blocks)


def test_allocation_reuses_never_used_then_least_recently_freed() -> None:
    pool = BlockPool(4, 2)
    first = pool.allocate(2)
    assert first is not None
    _register(pool, first, [1, 2, 3, 4])
    pool.release(first)
    # The two never-used blocks come first, so the cached prefix survives one more allocation.
    fresh = pool.allocate(2)
    assert fresh is not None and not set(fresh) & set(first)
    assert _lookup(pool, [1, 2, 3, 4]) == first
    pool.release(first)
    # Now reusing a cached block drops its entry. Issue 11 (tail-first freeing): the chain's tail goes first,
    # so the head, and the prefix it starts, can still be found (before: first[0] went, and the whole chain).
    again = pool.allocate(1)
    assert again == [first[1]]
    assert _lookup(pool, [1, 2, 3, 4]) == first[:1]


def test_register_keeps_first_block_for_a_hash() -> None:
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2) or []
    h = chain_hash(None, [1, 2])
    pool.register(a, h, [1, 2], None)
    pool.register(b, h, [1, 2], None)  # the same prefix computed twice (two sequences raced): the first stays
    assert pool.lookup([h], [[1, 2]]) == [a]
    pool.register(a, chain_hash(None, [5, 6]), [5, 6], None)  # a block's entry never changes while it holds data
    assert pool.lookup([chain_hash(None, [5, 6])], [[5, 6]]) == []


def test_tail_first_freeing_keeps_the_head_findable() -> None:
    """Freed chains are reused tail first: after reusing some blocks, the chain's head still matches."""
    pool = BlockPool(4, 2)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    chain = pool.allocate(4)
    assert chain is not None
    _register(pool, chain, tokens)
    pool.release(chain)
    # Two new blocks are needed: they must come from the chain's end, so its first two blocks stay cached.
    taken = pool.allocate(2)
    assert taken == [chain[3], chain[2]]
    assert _lookup(pool, tokens) == chain[:2]


def test_forged_collision_is_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every key colliding, a hit is still only taken when the block holds exactly these tokens."""
    monkeypatch.setattr(block_pool.hashlib, "sha256", lambda *a: _ConstantHash())
    pool = BlockPool(8, 2)
    victim = pool.allocate(2)
    assert victim is not None
    _register(pool, victim, [1, 2, 3, 4])
    assert len(set(_hashes([1, 2, 3, 4], 2) + _hashes([9, 9, 3, 4], 2))) == 1, "every key collides"
    assert _lookup(pool, [9, 9, 3, 4]) == [], "other tokens under the same key are not served"
    assert _lookup(pool, [1, 2, 3, 4], salt="tenant") == [], "another salt under the same key is not served"
    # Same tokens in block 1 behind a different block 0 is a miss too: the parent link is verified.
    assert _lookup(pool, [1, 2, 1, 2]) == victim[:1]


def test_salts_never_share_blocks() -> None:
    """Two salts never find each other's blocks; the same salt does."""
    pool = BlockPool(8, 2)
    tokens = [1, 2, 3, 4]
    a = pool.allocate(2)
    assert a is not None
    _register(pool, a, tokens, salt="alice")
    assert _lookup(pool, tokens, salt="bob") == []
    assert _lookup(pool, tokens) == []
    assert _lookup(pool, tokens, salt="alice") == a


def test_stale_parent_link_is_a_miss() -> None:
    """A cached block whose parent block was reused for other tokens is never served behind the new parent."""
    pool = BlockPool(2, 2)
    chain = pool.allocate(2)
    assert chain is not None
    _register(pool, chain, [1, 2, 3, 4])
    pool.release(chain[:1])  # the head is freed and reused for other tokens; the tail stays referenced
    head = pool.allocate(1)
    assert head == chain[:1]
    _register(pool, head, [1, 2])  # same tokens again, but a new computation of them (a new epoch)
    assert _lookup(pool, [1, 2, 3, 4]) == head, "the tail's parent link points at the old epoch"


class _ConstantHash:
    """A hash whose every digest is the same 32 bytes (a forged collision)."""

    def update(self, data: bytes) -> None:
        """Ignore the data."""

    def digest(self) -> bytes:
        """The one digest."""
        return b"\0" * 32
