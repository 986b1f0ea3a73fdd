"""Results of pure tool calls kept by (tool, canonical arguments): a repeat is answered without running it.

Only pure tools (no side effects, same arguments give the same result) may be cached; the agent loop checks
that before it asks. One cache may serve every agent of a MoA or a server. A client may also pre-register a
result (the tool-cache API of arXiv 2512.15834): when a model then writes that call, it is answered at once.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def canonical_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One string per distinct call: argument order, spacing and key order do not matter."""
    return name + json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass
class ToolCacheStats:
    """Lookups answered, missed and entries dropped for age."""

    hits: int = 0
    misses: int = 0
    expired: int = 0
    entries: int = 0


@dataclass(frozen=True)
class _Entry:
    result: Any
    stored_at: float


class ToolCache:
    """A bounded LRU map from canonical calls to results, each valid for `ttl` seconds (None: forever)."""

    def __init__(self, max_entries: int = 1024, ttl: float | None = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError(f"a tool cache needs max_entries >= 1, got {max_entries}")
        if ttl is not None and ttl <= 0:
            raise ValueError(f"a tool cache ttl must be > 0 seconds or None, got {ttl}")
        self.max_entries = max_entries
        self.ttl = ttl
        self.stats = ToolCacheStats()
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, name: str, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
        """(True, result) for a fresh entry of this call, else (False, None); counted as hit or miss."""
        key = canonical_call(name, arguments)
        entry = self._entries.get(key)
        if entry is not None and self.ttl is not None and self._clock() - entry.stored_at > self.ttl:
            del self._entries[key]
            self.stats.expired += 1
            self.stats.entries = len(self._entries)
            entry = None
        if entry is None:
            self.stats.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return True, entry.result

    def put(self, name: str, arguments: Mapping[str, Any], result: Any) -> None:
        """Store a pure call's result (also how a client pre-registers one)."""
        key = canonical_call(name, arguments)
        self._entries[key] = _Entry(result, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self.stats.entries = len(self._entries)
