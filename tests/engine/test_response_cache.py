"""The response cache: its keying, bounds and counters, and the embedded engine answering from it."""

from __future__ import annotations

import pytest

from engine import EngineError, SamplingParams
from engine.response_cache import CachedResponse, ResponseCache
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, tiny_llama

ANSWER = CachedResponse((5, 6, 7), "abc", "stop")


def test_an_exact_greedy_repeat_hits_and_anything_else_misses() -> None:
    cache = ResponseCache()
    greedy = SamplingParams(max_tokens=8)
    cache.put("m", [1, 2, 3], greedy, ANSWER)
    assert cache.get("m", [1, 2, 3], greedy) == ANSWER
    assert cache.get("m", [1, 2, 3], SamplingParams(max_tokens=8)) == ANSWER  # equal params, another object
    assert cache.get("m", [1, 2], greedy) is None  # another context
    assert cache.get("other", [1, 2, 3], greedy) is None  # another model
    assert cache.get("m", [1, 2, 3], SamplingParams(max_tokens=9)) is None  # another budget
    assert cache.get("m", [1, 2, 3], SamplingParams(max_tokens=8, stop=("x",))) is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries) == (2, 4, 1)


def test_sampled_requests_and_aborted_answers_are_never_stored() -> None:
    cache = ResponseCache()
    sampled = SamplingParams(temperature=0.8, seed=1)
    cache.put("m", [1], sampled, ANSWER)
    assert cache.get("m", [1], sampled) is None and cache.stats.uncacheable == 1
    cache.put("m", [1], SamplingParams(), CachedResponse((1,), "x", "abort"))
    assert cache.get("m", [1], SamplingParams()) is None and cache.stats.entries == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = ResponseCache(max_entries=2)
    greedy = SamplingParams()
    for context in ([1], [2]):
        cache.put("m", context, greedy, ANSWER)
    assert cache.get("m", [1], greedy) == ANSWER  # [1] is now the most recent
    cache.put("m", [3], greedy, ANSWER)
    assert cache.get("m", [2], greedy) is None and cache.get("m", [1], greedy) == ANSWER
    assert cache.stats.entries == 2
    with pytest.raises(EngineError, match="max_entries"):
        ResponseCache(max_entries=0)


async def test_the_engine_answers_an_exact_greedy_repeat_from_the_cache_with_no_compute() -> None:
    """A repeat of (context, greedy params) is answered without a forward pass; its tokens join the sequence and
    are computed only if the conversation goes on, after which it matches an engine without the cache."""
    engines = [TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20, response_cache=ResponseCache()),
               TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20)]
    cached, plain = engines
    try:
        prompt, params = list(range(3, 40)), SamplingParams(max_tokens=10, ignore_eos=True)
        first = await cached.open(prompt)
        ids, text, reason = await collect(cached, first, params)
        await cached.close(first)
        again = await cached.open(prompt)
        steps = cached.stats().forward_steps
        assert await collect(cached, again, params) == (ids, text, reason)
        assert cached.stats().forward_steps == steps and cached.stats().response_cache_hits == 1
        sampled = SamplingParams(max_tokens=4, temperature=0.7, seed=1)
        other = await cached.open(prompt)
        await collect(cached, other, sampled)
        await collect(cached, await cached.open(prompt), sampled)
        assert cached.stats().response_cache_hits == 1  # sampled requests draw afresh
        # The conversation goes on from the cached answer exactly as from a computed one.
        await cached.append(again, [41, 42])
        reference = await plain.open(prompt)
        await collect(plain, reference, params)
        await plain.append(reference, [41, 42])
        follow = SamplingParams(max_tokens=6, ignore_eos=True)
        assert await collect(cached, again, follow) == await collect(plain, reference, follow)
    finally:
        for eng in engines:
            await eng.shutdown()


def test_a_stored_answer_is_served_only_to_the_tenant_that_stored_it() -> None:
    cache = ResponseCache()
    greedy = SamplingParams(max_tokens=8)
    cache.put("m", [1, 2, 3], greedy, ANSWER, salt="tenant-a")
    assert cache.get("m", [1, 2, 3], greedy, "tenant-a") == ANSWER
    assert cache.get("m", [1, 2, 3], greedy, "tenant-b") is None
    assert cache.get("m", [1, 2, 3], greedy) is None  # unsalted is a tenant of its own
    cache.put("m", [1, 2, 3], greedy, ANSWER)
    assert cache.get("m", [1, 2, 3], greedy, "") is None  # an empty salt is not the absence of one


async def test_the_engine_never_answers_another_tenants_repeat_from_the_cache() -> None:
    eng = TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20, response_cache=ResponseCache())
    try:
        prompt, params = list(range(3, 30)), SamplingParams(max_tokens=6, ignore_eos=True)
        answer = await collect(eng, await eng.open(prompt, cache_salt="a"), params)
        steps = eng.stats().forward_steps
        assert await collect(eng, await eng.open(prompt, cache_salt="b"), params) == answer
        assert eng.stats().response_cache_hits == 0 and eng.stats().forward_steps > steps  # b computed its own
        assert await collect(eng, await eng.open(prompt, cache_salt="a"), params) == answer
        assert eng.stats().response_cache_hits == 1
    finally:
        await eng.shutdown()
