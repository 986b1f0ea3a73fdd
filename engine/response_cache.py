"""Exact-repeat answers: the same model, context tokens and greedy sampling give the stored output, no compute.

Only greedy requests are cached (a sampled one must draw afresh), keyed by a SHA-256 of the context's tokens
with the full sampling parameters, so a different stop string, budget or grammar is a different entry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EngineError
from .protocol import FinishReason, SamplingParams


@dataclass(frozen=True)
class CachedResponse:
    """What a generation produced: its tokens, text and why it ended."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason


@dataclass
class ResponseCacheStats:
    """Lookups that hit, missed, or were not cacheable (sampled), and entries stored."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    entries: int = 0


class ResponseCache:
    """A bounded LRU map from (model, context tokens, greedy params) to the response they gave."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise EngineError(f"a response cache needs max_entries >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.stats = ResponseCacheStats()
        self._entries: OrderedDict[tuple[str, bytes, SamplingParams], CachedResponse] = OrderedDict()

    @staticmethod
    def _key(model: str, tokens: Sequence[int], params: SamplingParams) -> tuple[str, bytes, SamplingParams]:
        digest = hashlib.sha256(b"".join(t.to_bytes(4, "little") for t in tokens)).digest()
        return model, digest, params

    def get(self, model: str, tokens: Sequence[int], params: SamplingParams) -> CachedResponse | None:
        """The stored response for this exact request, or None (counted as hit, miss or uncacheable)."""
        if not params.greedy:
            self.stats.uncacheable += 1
            return None
        key = self._key(model, tokens, params)
        found = self._entries.get(key)
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found

    def put(self, model: str, tokens: Sequence[int], params: SamplingParams, response: CachedResponse) -> None:
        """Store a finished greedy response (aborted ones are not answers and are skipped)."""
        if not params.greedy or response.finish_reason == "abort":
            return
        self._entries[self._key(model, tokens, params)] = response
        self._entries.move_to_end(self._key(model, tokens, params))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self.stats.entries = len(self._entries)
