"""The tool cache on its own: canonical keys, LRU bound, TTL on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from moa_stream.agent.tool_cache import ToolCache, canonical_call


def test_argument_order_does_not_matter_but_values_do() -> None:
    assert canonical_call("add", {"a": 1, "b": 2}) == canonical_call("add", {"b": 2, "a": 1})
    assert canonical_call("add", {"a": 1, "b": 2}) != canonical_call("add", {"a": 2, "b": 1})
    assert canonical_call("add", {"a": 1}) != canonical_call("sub", {"a": 1})


def test_hits_misses_lru_bound_and_ttl() -> None:
    now = [0.0]
    cache = ToolCache(max_entries=2, ttl=10.0, clock=lambda: now[0])
    assert cache.get("f", {"x": 1}) == (False, None)
    cache.put("f", {"x": 1}, "one")
    cache.put("f", {"x": 2}, "two")
    assert cache.get("f", {"x": 1}) == (True, "one")  # now the most recently used
    cache.put("f", {"x": 3}, "three")  # evicts x=2, the least recently used
    assert cache.get("f", {"x": 2}) == (False, None)
    assert cache.get("f", {"x": 3}) == (True, "three")
    now[0] = 10.5
    assert cache.get("f", {"x": 1}) == (False, None)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.expired, cache.stats.entries) == (2, 3, 1, 1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ToolCache(max_entries=0)
    with pytest.raises(ValueError, match="ttl"):
        ToolCache(ttl=0)
