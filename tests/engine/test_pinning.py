"""pin(seq, ttl) on TransformersEngine: a pinned sequence survives KV pressure; past its TTL it is evictable again."""

from __future__ import annotations

import asyncio
from typing import Any

from engine import SamplingParams
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect
from tests.engine.test_transformers_engine_tiny import hf_generate, rand_tokens, small_engine


async def test_pinned_sequence_survives_pressure_then_expires(ref_model: Any) -> None:
    """Pressure evicts the unpinned sequence, not the older pinned one; after the TTL the pinned one goes, and
    using it again recomputes it transparently with the same output."""
    eng: TransformersEngine = small_engine(blocks=16)
    try:
        toks = {name: rand_tokens(24, seed=10 + i) for i, name in enumerate("abcd")}  # 6 blocks each
        a = await eng.open(toks["a"])  # the least recently used: LRU alone would evict it first
        await eng.pin(a, ttl=1.0)
        b = await eng.open(toks["b"])
        c = await eng.open(toks["c"])  # 12 + 6 > 16: someone goes, and it must be `b`
        assert eng.stats().evictions == 1
        await eng.append(a, [5])  # resident: computes only its new token
        assert eng.seq_stats(a).recomputed_after_eviction == 0
        assert eng.seq_stats(a).prefill_computed == 25

        await asyncio.sleep(1.1)  # the pin expires: `a` is an ordinary idle sequence again
        await eng.close(c)
        await eng.append(b, [6])  # b comes back (recomputed) and takes c's room
        d = await eng.open(toks["d"])  # no room: the LRU idle sequence, `a`, is evicted now
        assert eng.stats().evictions >= 2
        assert eng.seq_stats(a).recomputed_after_eviction == 0
        ids, _, _ = await collect(eng, a, SamplingParams(max_tokens=5, ignore_eos=True))
        assert eng.seq_stats(a).recomputed_after_eviction > 0, "recomputed transparently after its pin expired"
        assert ids == hf_generate(ref_model, toks["a"] + [5], 5)
        for s in (a, b, d):
            await eng.close(s)
    finally:
        await eng.shutdown()
