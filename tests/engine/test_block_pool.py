"""BlockPool: allocation, refcounts, prefix-hash cache and reuse order (pure Python, no model)."""

from __future__ import annotations

import pytest

from engine.block_pool import BlockPool, chain_hash


def _hashes(tokens: list[int], block_size: int) -> list[int]:
    out: list[int] = []
    for i in range(len(tokens) // block_size):
        out.append(chain_hash(out[-1] if out else 0, tokens[i * block_size:(i + 1) * block_size]))
    return out


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
    h1 = chain_hash(0, [1, 2])
    assert h1 == chain_hash(0, [1, 2])
    assert h1 != chain_hash(0, [2, 1])
    assert chain_hash(h1, [3, 4]) != chain_hash(0, [3, 4]), "same block after a different prefix must differ"


def test_lookup_finds_longest_cached_run_and_references_it() -> None:
    pool = BlockPool(8, 2)
    tokens = [1, 2, 3, 4, 5, 6]
    hs = _hashes(tokens, 2)
    blocks = pool.allocate(3)
    assert blocks is not None
    for b, h in zip(blocks, hs, strict=True):
        pool.register(b, h)
    assert pool.lookup(hs) == blocks
    assert [pool.refcount(b) for b in blocks] == [2, 2, 2]
    # A different second block breaks the chain: only the first block matches.
    other = _hashes([1, 2, 9, 9, 5, 6], 2)
    assert pool.lookup(other) == blocks[:1]
    assert pool.refcount(blocks[0]) == 3
    assert pool.lookup(_hashes([7, 7], 2)) == []


def test_freed_blocks_stay_cached_until_reused() -> None:
    pool = BlockPool(3, 2)
    hs = _hashes([1, 2, 3, 4], 2)
    blocks = pool.allocate(2)
    assert blocks is not None
    for b, h in zip(blocks, hs, strict=True):
        pool.register(b, h)
    pool.release(blocks)
    assert pool.used_count == 0
    # A later sequence with the same prefix finds the freed blocks and takes them off the free list.
    assert pool.lookup(hs) == blocks
    assert pool.used_count == 2 and pool.free_count == 1
    pool.release(blocks)


def test_allocation_reuses_never_used_then_least_recently_freed() -> None:
    pool = BlockPool(4, 2)
    first = pool.allocate(2)
    assert first is not None
    hs = _hashes([1, 2, 3, 4], 2)
    for b, h in zip(first, hs, strict=True):
        pool.register(b, h)
    pool.release(first)
    # The two never-used blocks come first, so the cached prefix survives one more allocation.
    fresh = pool.allocate(2)
    assert fresh is not None and not set(fresh) & set(first)
    assert pool.lookup(hs) == first
    pool.release(first)
    # Now reusing a cached block drops its hash: the prefix can no longer be found.
    again = pool.allocate(1)
    assert again == [first[0]]
    assert pool.lookup(hs) == []


def test_register_keeps_first_block_for_a_hash() -> None:
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2) or []
    h = chain_hash(0, [1, 2])
    pool.register(a, h)
    pool.register(b, h)  # the same prefix computed twice (two sequences raced): the first one stays canonical
    assert pool.lookup([h]) == [a]
    pool.register(a, chain_hash(0, [5, 6]))  # a block's hash never changes while it holds data
    assert pool.lookup([chain_hash(0, [5, 6])]) == []
