"""The llama.cpp engine's prefix index: a cached prefix is shared only within one tenant's salt (issue 24).

Pure bookkeeping over LlamaSeq records (no model): the index is what decides whose cells a new sequence copies.
"""

from __future__ import annotations

from engine.llamacpp_engine.prefix_index import PrefixIndex
from engine.llamacpp_engine.sequence_state import LlamaSeq

BLOCK = 4
TOKENS = list(range(10, 23))  # three full blocks and one token more


def resident(index: PrefixIndex, seq_id: int, salt: str | None) -> LlamaSeq:
    """A sequence whose tokens are all computed and entered in the index."""
    s = LlamaSeq(seq_id, list(TOKENS), cache_salt=salt)
    s.num_computed = len(TOKENS)
    index.register(s)
    return s


def test_the_same_tokens_are_shared_within_a_salt_only():
    index = PrefixIndex(BLOCK)
    holder = resident(index, 1, "tenant-a")
    assert index.longest(LlamaSeq(2, list(TOKENS), cache_salt="tenant-a")) == (holder, 12)
    assert index.longest(LlamaSeq(3, list(TOKENS), cache_salt="tenant-b")) == (None, 0)
    assert index.longest(LlamaSeq(4, list(TOKENS))) == (None, 0)


def test_a_key_collision_with_another_tenants_salt_is_a_miss():
    """Even when the chain keys match (a forged or colliding digest), the salt is compared before cells are shared."""
    index = PrefixIndex(BLOCK)
    holder = resident(index, 1, "victim")
    attacker = LlamaSeq(2, list(TOKENS), cache_salt="attacker")
    attacker.hashes = list(holder.hashes)  # as if its keys had collided with the victim's
    assert index.longest(attacker) == (None, 0)
    same_tenant = LlamaSeq(3, list(TOKENS), cache_salt="victim")
    same_tenant.hashes = list(holder.hashes)
    assert index.longest(same_tenant) == (holder, 12)
